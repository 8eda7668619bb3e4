"""The arithmetic of aggregation, on numpy arrays, framework-free.

Strategies (one per module in this package) fold updates slice by slice; these
functions are the exact, in-place steps they share, kept apart from the framework
helpers so a combiner aggregates any framework's models with numpy alone.
"""
from __future__ import annotations

import numpy as np

from fedtier.helpers.base import IncompatibleModelError


def increment_average(
    mean: np.ndarray, update: np.ndarray, weight: float, total_weight: float,
    *, scratch_update: bool = False,
) -> None:
    """Fold one update into a running weighted mean, in place.

    ``mean += (weight / total_weight) * (update - mean)`` where ``total_weight``
    already includes ``weight``; after n calls ``mean`` is the weighted average of
    the n updates, without holding them all. The first call (weight ==
    total_weight) copies the update exactly, so ``mean``'s initial content is
    irrelevant.

    float32 and float64 tensors are averaged in their own precision (one
    temporary, the slice's size: aggregation's hot path). Other float dtypes
    are computed in float64 and rounded once per call into ``mean``'s dtype, so
    float16/bf16 lose nothing beyond that rounding. Integer and bool
    tensors (BatchNorm ``num_batches_tracked``, masks) are rounded half-to-even
    and clipped to the dtype's range at every call; the result is exact when the
    updates agree and otherwise within about one unit per update of the true
    mean. Callers who want the single-rounding result should accumulate in a
    float64 buffer (``mean`` may have a different, float, dtype from ``update``)
    and convert once with ``finalize``. int64 values beyond 2**53 are not exact.

    ``scratch_update=True`` lets the float32/float64 path compute in ``update``'s own
    memory (its content is then undefined): a streaming fold that reads each slice
    into one reused buffer saves a temporary and a pass over memory per slice.
    """
    if mean.shape != update.shape:
        raise IncompatibleModelError(
            f"cannot average shape {list(update.shape)} into {list(mean.shape)}"
        )
    if not mean.flags.writeable:
        raise ValueError("mean must be a writeable array")
    if not (total_weight > 0 and 0 <= weight <= total_weight * (1 + 1e-12)):
        raise ValueError(
            f"need 0 <= weight <= total_weight and total_weight > 0; got weight={weight}, "
            f"total_weight={total_weight}"
        )
    if weight == 0:
        return
    frac = min(1.0, float(weight) / float(total_weight))
    if frac == 1.0:
        if mean.dtype == update.dtype:
            np.copyto(mean, update)
        else:
            _store(mean, update.astype(np.float64))
        return
    if mean.dtype == update.dtype and mean.dtype in (np.float32, np.float64):
        # the hot path of every aggregation: one temporary of the slice's size (none
        # with scratch_update), in the tensor's own precision (float32 rounding per
        # step is ~1e-7 relative)
        delta = np.subtract(update, mean, out=update if scratch_update and update.flags.writeable else None)
        delta *= frac
        mean += delta
        return
    if mean.dtype == np.float64:
        delta = update.astype(np.float64)
        delta -= mean
        delta *= frac
        mean += delta
        return
    result = mean.astype(np.float64)
    delta = update.astype(np.float64)
    delta -= result
    delta *= frac
    result += delta
    _store(mean, result)

def _store(out: np.ndarray, values: np.ndarray) -> None:
    if out.dtype.kind in "iub":
        np.rint(values, out=values)
        if out.dtype.kind == "b":
            np.clip(values, 0, 1, out=values)
        else:
            info = np.iinfo(out.dtype)
            high = float(info.max)
            if int(high) > info.max:  # 2**63 - 1 rounds up to 2**63 in float64
                high = float(np.nextafter(high, 0.0))
            np.clip(values, float(info.min), high, out=values)
    np.copyto(out, values, casting="unsafe")

def finalize(accumulator: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Convert a float accumulator back to the tensor's dtype, rounding integers once."""
    out = np.empty(accumulator.shape, dtype=dtype)
    _store(out, accumulator.astype(np.float64))
    return out
