"""The aggregation interface shared by both tiers.

A combiner folds client updates into a combiner model; the reducer folds combiner
models into the global model. Both see a stream of (model file, weight) pairs and
must not keep them all: ``add`` consumes one update and the caller may delete the file
right after. New algorithms (FedProx's server side, FedAdam, trimmed mean, median
with a disk-backed buffer) are one file each behind this class.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping

from fedtier.aggregators.params import Param, check_params
from fedtier.aggregators.update_check import UpdateCheck
from fedtier.helpers.base import Helper


class Aggregator(ABC):
    name: ClassVar[str]
    # what ``aggregator_kwargs`` may hold for this algorithm; RoundConfig checks a session's
    # settings against it at /start and on the combiner, before any round runs
    params: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, helper: Helper, **params: Any) -> None:
        self.settings = {name: p.default for name, p in self.params.items()}
        self.settings.update(check_params(self.name, self.params, params))
        self.helper = helper
        self.num_updates = 0
        self.total_weight = 0.0

    @abstractmethod
    def start(self, reference: Path) -> None:
        """Begin a round that starts from the model at ``reference`` (the global model).
        Updates must match its tensors; algorithms with server state may use its values."""

    @abstractmethod
    def add(self, update: Path, weight: float, checked: UpdateCheck | None = None) -> None:
        """Fold one update in. Raise (IncompatibleModelError, ModelFormatError, ValueError)
        and leave the aggregate unchanged if the update is not acceptable.

        ``checked`` is the ``arrival_check`` this aggregator made for the update's bytes
        as they were received into ``update``: its verdict stands in for reading the
        file to check it. Any other value is ignored and the file is checked."""

    def check(self, update: Path, checked: UpdateCheck | None = None) -> None:
        """Raise as ``add`` would if the update is not acceptable, folding nothing: a
        combiner that must defer an update (its weight may be capped, fedtier/aggregators/
        weight_policy.py) refuses a bad one on arrival, not when the round closes.
        The default folds nothing and checks nothing; ``add`` still checks."""

    def arrival_check(self, size: int) -> UpdateCheck | None:
        """A check to feed an update's bytes as they arrive (``size`` of them), or None if
        this algorithm checks its updates only from the file. Made during a round,
        after ``start``."""
        return None

    @abstractmethod
    def finish(self, out: Path) -> float:
        """Write the aggregate to ``out`` and return the total weight folded in.

        ``out`` is a scratch file (it need not be fsynced): the combiner sends it on and
        the reducer commits it to the store, which makes its own copy durable."""

    def aggregate_one(self, update: Path, weight: float, out: Path,
                      checked: UpdateCheck | None = None) -> float | None:
        """A round with a single update, when the algorithm's result is that update as it is:
        check it as ``add`` would (``checked`` as in ``add``), move it to ``out`` and return its weight. None (the default)
        means the algorithm has no such shortcut and the caller goes through ``add``/``finish``.

        A reducer with one combiner otherwise reads, folds and rewrites the whole model to
        get back the same values: seconds for a gigabyte model."""
        return None
