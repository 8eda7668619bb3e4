"""Personalised layers (FedPer, Arivazhagan et al.): a shared body, a head per client.

With skewed data one global head fits nobody well. The layers named by ``personal``
(comma-separated shell patterns over tensor names, e.g. ``fc2.*``) are never averaged:
the aggregate keeps the round's model values for them, and each client keeps its own
across the rounds of a session (client/personal.py puts them back into every model it
is given and validates both the global and its personalised model). Everything else is
FedAvg, so at either tier, and over both, the shared layers are the plain weighted mean.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from fedtier.aggregators.base import RoundContext, StrategyError, Update
from fedtier.aggregators.fedavg import FedAvg
from fedtier.aggregators.params import Param
from fedtier.helpers.base import Helper

MAX_PATTERNS = 32


def personal_patterns(text: str) -> list[str]:
    """The patterns of a ``personal`` setting: comma-separated, blanks ignored."""
    return [p.strip() for p in str(text).split(",") if p.strip()]


def is_personal(tensor: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(tensor, pattern) for pattern in patterns)


class FedPer(FedAvg):
    name = "fedper"
    summary = "FedAvg over the shared layers; the layers named by `personal` stay on each client"
    params = {"personal": Param(str, "", max_length=2000, client=True,
                                doc="comma-separated patterns of tensor names that are never aggregated, "
                                    "e.g. fc2.* (each client keeps its own)")}

    def __init__(self, helper: Helper, **params: Any) -> None:
        super().__init__(helper, **params)
        self.patterns = personal_patterns(self.settings["personal"])
        if len(self.patterns) > MAX_PATTERNS:
            raise StrategyError(f"personal: at most {MAX_PATTERNS} patterns, got {len(self.patterns)}", "personal")

    def start(self, reference: Path, context: RoundContext | None = None) -> None:
        super().start(reference, context)
        if not self.patterns:
            raise StrategyError("personal: name the layers that stay on the clients (e.g. fc2.*); "
                                "with none, fedper is fedavg", "personal")
        names = [t.name for t in self._reference.tensors]
        if not any(is_personal(name, self.patterns) for name in names):
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise StrategyError(f"personal: {self.settings['personal']!r} matches no tensor of the model "
                                f"(its tensors: {shown})", "personal")
        if all(is_personal(name, self.patterns) for name in names):
            raise StrategyError(f"personal: {self.settings['personal']!r} matches every tensor: nothing would be "
                                "shared", "personal")

    def aggregated(self, tensor: str) -> bool:
        return not is_personal(tensor, self.patterns)

    def aggregate_one(self, update: Update, out: Path) -> float | None:
        return None  # the personal layers must come from the round's model, not the one update
