"""The strategy interface shared by both tiers.

A combiner folds its clients' updates into a combiner model; the reducer folds combiner
models into the global model. Each tier runs a strategy of its own, chosen in the round
settings (fedtier/round_config.py), so a robust reduce can guard a combiner whose clients
may lie while the reducer applies a server optimiser once, to the global model only.

Updates arrive one at a time as files on disk, and a strategy must not hold them all in
memory: a mean folds each in and forgets it; a strategy that needs every update (a
median, Krum) keeps the files (``keep``) and reads them back slice by slice in
``finish``. An update is a value that says who sent it, which model it started from and
when it arrived, so later strategies (asynchronous or buffered rounds) can weigh an
update by its staleness without a new interface.

Strategies with state across rounds (a server optimiser's moments) say so with
``stateful`` and write it with ``save_state``: the reducer stores it with the model it
produced, so the state follows the trail and a restarted reducer continues from it.
"""
from __future__ import annotations

import math
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from fedtier.aggregators.params import Param, check_params
from fedtier.aggregators.update_check import UpdateCheck, check_file
from fedtier.helpers.base import Helper
from fedtier.helpers.format import ModelHeader, read_header

COMBINER, REDUCER = "combiner", "reducer"
TIERS: tuple[str, ...] = (COMBINER, REDUCER)


@dataclass(frozen=True)
class Update:
    """One update offered to a strategy.

    ``path`` is the caller's file: it may be deleted as soon as ``add`` returns, so a
    strategy that needs it later calls ``Strategy.keep``. ``sender`` is the verified name
    of the client (at a combiner) or the combiner (at the reducer); ``base_model`` the
    model it was trained from; ``checked`` the verdict of the check made on its bytes as
    they arrived (``Strategy.arrival_check``), standing in for a second read."""

    path: Path
    weight: float
    sender: str = ""
    base_model: str = ""
    round_id: str = ""
    received_at: float = 0.0
    checked: UpdateCheck | None = None


@dataclass(frozen=True)
class RoundContext:
    """What a strategy knows of the round it aggregates. ``work_dir`` is a scratch
    directory of the round, on the same file system as the updates, for strategies that
    keep updates on disk; the caller removes it after the round."""

    tier: str = COMBINER
    round_id: str = ""
    round_number: int = 0
    session_id: str = ""
    base_model: str = ""
    work_dir: Path | None = None


class StrategyError(ValueError):
    """A strategy cannot run as asked (a tier it does not run at, a state it cannot load, a
    parameter that does not fit the model); ``param`` names the parameter at fault, if one is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Strategy(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line for the start page and the OpenAPI document
    # the settings this strategy takes; RoundConfig checks a session's against it at /start
    params: ClassVar[Mapping[str, Param]] = {}
    # the tiers it makes sense at: a server optimiser moves the global model once, so it
    # runs at the reducer only (at a combiner it would be applied again at every tier)
    tiers: ClassVar[tuple[str, ...]] = TIERS
    # keeps state across the rounds of a session (save_state / load_state)
    stateful: ClassVar[bool] = False

    def __init__(self, helper: Helper, **params: Any) -> None:
        self.settings = {name: p.default for name, p in self.params.items()}
        self.settings.update(check_params(self.name, self.params, params))
        self.helper = helper
        self.num_updates = 0
        self.total_weight = 0.0
        self.context = RoundContext()

    @abstractmethod
    def start(self, reference: Path, context: RoundContext | None = None) -> None:
        """Begin a round that starts from the model at ``reference`` (the round's model).
        Updates must match its tensors; strategies with server state use its values.
        Subclasses call ``super().start`` or set ``self.context`` themselves."""

    @abstractmethod
    def add(self, update: Update) -> None:
        """Take one update in. Raise (IncompatibleModelError, ModelFormatError, ValueError)
        and leave the aggregate unchanged if the update is not acceptable."""

    def check(self, update: Update) -> None:
        """Raise as ``add`` would if the update is not acceptable, taking nothing in: a
        combiner that must defer an update (its weight may be capped, fedtier/aggregators/
        weight_policy.py) refuses a bad one on arrival, not when the round closes.
        The default checks nothing; ``add`` still checks."""

    def arrival_check(self, size: int) -> UpdateCheck | None:
        """A check to feed an update's bytes as they arrive (``size`` of them), or None if
        this strategy checks its updates only from the file. Made after ``start``."""
        return None

    @abstractmethod
    def finish(self, out: Path) -> float:
        """Write the aggregate to ``out`` and return the total weight taken in.

        ``out`` is a scratch file (it need not be fsynced): the combiner sends it on and
        the reducer commits it to the store, which makes its own copy durable."""

    def aggregate_one(self, update: Update, out: Path) -> float | None:
        """A round with a single update, when the strategy's result is that update as it is:
        check it as ``add`` would, move it to ``out`` and return its weight. None (the
        default) means there is no such shortcut and the caller goes through ``add``/``finish``.

        A reducer with one combiner otherwise reads, folds and rewrites the whole model to
        get back the same values: seconds for a gigabyte model."""
        return None

    def staleness_weight(self, update: Update) -> float:
        """How much an update that started from an older model than the round's counts, as a
        fraction of its weight: 0 refuses it. Synchronous strategies (the default) refuse
        every one; an asynchronous or buffered strategy returns its discount (for example
        by how long ago ``update.base_model`` was the round's model) and then sees the
        update in ``add`` with ``base_model`` naming the older model and the weight discounted."""
        return 0.0

    # ---- state across rounds
    def save_state(self, path: Path) -> bool:
        """Write the state the next round needs to ``path``; False if there is none yet."""
        return False

    def load_state(self, path: Path) -> None:
        """Continue from a state ``save_state`` wrote (after a reducer restart)."""
        raise StrategyError(f"strategy {self.name!r} keeps no state")

    # ---- for strategies that need every update
    def keep(self, update: Update) -> Path:
        """A path to ``update``'s file that stays valid after the caller deletes its own:
        a hard link in the round's work directory (a copy where links are impossible)."""
        work = self.context.work_dir or update.path.parent
        spool = Path(work) / f"kept-{self.name}"
        spool.mkdir(parents=True, exist_ok=True)
        target = spool / uuid.uuid4().hex
        try:
            os.link(update.path, target)
        except OSError:
            shutil.copyfile(update.path, target)
        return target


def check_weight(weight: float) -> None:
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise ValueError(f"update weight must be a positive number of examples, got {weight!r}")


class CheckedStrategy(Strategy):
    """A strategy that checks every update completely against the round's model (shapes,
    dtypes, finite values: update_check.py) before taking any of it in, on a combiner as its
    bytes arrive, and for which one update alone is the result (``aggregate_one``)."""

    def start(self, reference: Path, context: RoundContext | None = None) -> None:
        self.context = context or RoundContext()
        self._reference_path = reference
        self._reference: ModelHeader = read_header(reference)
        self.num_updates = 0
        self.total_weight = 0.0

    def arrival_check(self, size: int) -> UpdateCheck:
        return UpdateCheck(self.helper, self._reference, size)

    def check(self, update: Update) -> None:
        self._verdict(update)

    def _verdict(self, update: Update) -> ModelHeader:
        """Shapes and dtypes as the reference's, every value finite; raises otherwise. The
        verdict of a check this round made on the update's bytes as they arrived, else a
        read of the file."""
        checked = update.checked
        if isinstance(checked, UpdateCheck) and checked.reference is self._reference:
            return checked.verdict()
        return check_file(self.helper, self._reference, update.path)

    def aggregate_one(self, update: Update, out: Path) -> float | None:
        """One update is the result (the weighted mean, the median... of one model): checked,
        then moved to ``out``. Strategies whose result is not the update say None."""
        if self.num_updates:
            raise ValueError("aggregate_one is for a round with a single update, and updates were added")
        check_weight(update.weight)
        self._verdict(update)
        os.replace(update.path, out)
        self.num_updates, self.total_weight = 1, float(update.weight)
        return self.total_weight


Aggregator = Strategy  # the older name
