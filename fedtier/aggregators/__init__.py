"""Aggregation strategies, one per module, chosen per tier by name from round settings.

``STRATEGIES`` is the one registry: round settings are checked against it, and the start
page and the OpenAPI document list each strategy, its tiers and its parameters from it.
A new strategy is a module with a ``Strategy`` subclass and one line below.
"""
from __future__ import annotations

from typing import Any

from fedtier.aggregators.base import (COMBINER, REDUCER, TIERS, Aggregator, RoundContext, Strategy,
                                      StrategyError, Update)
from fedtier.aggregators.fedadagrad import FedAdagrad
from fedtier.aggregators.fedadam import FedAdam
from fedtier.aggregators.fedavg import FedAvg
from fedtier.aggregators.fedavgm import FedAvgM
from fedtier.aggregators.fedper import FedPer
from fedtier.aggregators.fedprox import FedProx
from fedtier.aggregators.fedyogi import FedYogi
from fedtier.aggregators.krum import Krum
from fedtier.aggregators.median import Median
from fedtier.aggregators.multikrum import MultiKrum
from fedtier.aggregators.trimmed_mean import TrimmedMean
from fedtier.helpers.base import Helper

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    FedAvg,
    FedAvgM,
    FedAdam,
    FedYogi,
    FedAdagrad,
    FedProx,
    Median,
    TrimmedMean,
    Krum,
    MultiKrum,
    FedPer,
)}
AGGREGATORS = STRATEGIES  # the older name


def strategy_class(name: str, tier: str) -> type[Strategy]:
    """The strategy called ``name``, if it runs at ``tier``; StrategyError naming both otherwise."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
    if tier not in cls.tiers:
        raise StrategyError(f"strategy {name!r} runs only at the {' and '.join(cls.tiers)} tier"
                            f"{'s' if len(cls.tiers) > 1 else ''}, not at the {tier} tier")
    return cls


def get_strategy(name: str, helper: Helper, tier: str, **params: Any) -> Strategy:
    return strategy_class(name, tier)(helper, **params)


def describe() -> list[dict[str, Any]]:
    """Every strategy as the start page and the API show it: name, tiers, parameters."""
    return [{"name": name, "summary": cls.summary, "tiers": list(cls.tiers), "stateful": cls.stateful,
             "params": {p: {**param.json_schema(), "default": param.default, "client": param.client}
                        for p, param in cls.params.items()}}
            for name, cls in sorted(STRATEGIES.items())]


__all__ = ["AGGREGATORS", "COMBINER", "REDUCER", "STRATEGIES", "TIERS", "Aggregator", "FedAvg", "RoundContext",
           "Strategy", "StrategyError", "Update", "describe", "get_strategy", "strategy_class"]
