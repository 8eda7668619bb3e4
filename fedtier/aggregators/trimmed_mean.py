"""The coordinate-wise trimmed mean of the updates (Yin et al., 2018).

For each coordinate, the k = floor(beta x n) smallest and k largest values over the n
updates are dropped and the rest averaged. k never exceeds (n - 1) // 2, so at least one
value (odd n) or two (even n) remain: beta = 0.5 is the median, beta = 0 the plain
(unweighted) mean. Unweighted like the median: weighing the kept values by examples
would let a liar's weight back in. Memory as every kept-update strategy (kept.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedtier.aggregators.kept import KeptUpdates
from fedtier.aggregators.params import Param


def trimmed_count(beta: float, n: int) -> int:
    """Values dropped at each end: floor(beta x n) (beta x n computed in floats may fall a
    hair under an integer: 0.29 x 100), at most (n - 1) // 2."""
    return min(math.floor(beta * n + 1e-9), (n - 1) // 2)


class TrimmedMean(KeptUpdates):
    name = "trimmed_mean"
    summary = "the coordinate-wise mean after dropping the beta fraction at each end, unweighted (Yin et al.)"
    params = {"beta": Param(float, 0.1, 0.0, 0.5,
                            doc="the fraction of updates dropped at each end of every coordinate: "
                                "floor(beta x n), at most (n - 1) // 2 (0.5 is the median)")}

    def combine(self, out: Path) -> None:
        n = len(self._kept)
        k = trimmed_count(float(self.settings["beta"]), n)

        def trimmed(rows: np.ndarray) -> np.ndarray:
            if k:
                rows.sort(axis=0)  # faster than a partition at k and n - k - 1 (median.py)
            return rows[k:n - k].mean(axis=0)

        self.reduce_slices(out, range(n), trimmed)
