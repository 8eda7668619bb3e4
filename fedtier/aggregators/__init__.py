"""Aggregation algorithms, one per module, looked up by name from round settings."""
from typing import Any

from fedtier.aggregators.base import Aggregator
from fedtier.aggregators.fedavg import FedAvg
from fedtier.helpers.base import Helper

AGGREGATORS: dict[str, type[Aggregator]] = {FedAvg.name: FedAvg}


def get_aggregator(name: str, helper: Helper, **params: Any) -> Aggregator:
    try:
        cls = AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}") from None
    return cls(helper, **params)


__all__ = ["AGGREGATORS", "Aggregator", "FedAvg", "get_aggregator"]
