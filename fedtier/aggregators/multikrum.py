"""Multi-Krum (Blanchard et al., 2017): the mean of the m updates with the best Krum scores.

Scores are Krum's (krum.py), computed once; the m lowest are chosen (the first added on
a tie). ``m = 0`` means n - f, and m is never more than n - f: averaging more than that
would let in at least one update Krum was told to suspect. With f = 0 and m = 0 it is
the mean of all updates, FedAvg's result. Needs n > 2f + 2, like Krum.

The chosen updates are averaged weighted by their examples, as FedAvg would average
them: the selection is the defence, and a liar that passes it also passed the round's
weight cap (weight_policy.py). ``finish`` returns the weight of all updates taken, chosen
or not, so the tier above weighs this aggregate by every example behind the round.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from fedtier.aggregators.krum import MAX_F, Krum
from fedtier.aggregators.params import Param

MAX_M = 1_000_000  # round_config.MAX_CLIENTS (imported from there, it would be a cycle)


class MultiKrum(Krum):
    name = "multikrum"
    summary = ("the examples-weighted mean of the m updates with the best Krum scores; m = 0 means n - f; "
               "needs n > 2f + 2 (Blanchard et al.)")
    params = {"f": Param(int, 1, 0, MAX_F, doc="how many updates may be Byzantine; a round needs more than 2f + 2"),
              "m": Param(int, 0, 0, MAX_M, doc="how many of the best-scored updates are averaged; "
                                                     "0 means n - f, and never more than n - f")}

    def chosen(self) -> list[int]:
        n = len(self._kept)
        self.enough(n)
        m = min(int(self.settings["m"]) or n - self.f, n - self.f)
        return [int(i) for i in np.argsort(self.scores(), kind="stable")[:m]]

    def combine(self, out: Path) -> None:
        chosen = self.chosen()
        weights = np.array([self._kept[i].weight for i in chosen], dtype=np.float64)
        weights /= weights.sum()
        with threadpool_limits(limits=1, user_api="blas"):  # as Krum's products (krum.py)
            self.reduce_slices(out, chosen, lambda rows: weights @ rows)
