"""The coordinate-wise median of the updates (Yin et al., 2018).

Each coordinate of the result is the median of that coordinate over the round's updates
(for an even count, the mean of the two middle values), so fewer than half of the
updates, however far off, cannot move any coordinate beyond the honest values' range.
Unweighted: an update counts once whatever its examples (a liar's weight buys nothing);
the total weight is still returned for the tier above. Reads every kept update back
slice by slice (kept.py): memory is the output plus a bounded buffer.

Over two tiers, a median of the combiners' medians is not the median of all updates
(docs/strategies.md gives a counterexample); what holds is containment: attackers that
are a minority on each combiner do not reach that combiner's model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fedtier.aggregators.kept import KeptUpdates


def _median(rows: np.ndarray) -> np.ndarray:
    """The median of each column; sorts ``rows`` in place. A sort along the updates is
    several times faster than np.median's partition for the tens of updates a tier sees."""
    rows.sort(axis=0)
    n = rows.shape[0]
    low, high = rows[(n - 1) // 2], rows[n // 2]
    return low if n % 2 else (low + high) * 0.5


class Median(KeptUpdates):
    name = "median"
    summary = "the coordinate-wise median of the updates, unweighted (Yin et al.)"

    def combine(self, out: Path) -> None:
        self.reduce_slices(out, range(len(self._kept)), _median)
