"""Split a dataset's sample indices among federated clients.

Every test project, benchmark and the sandbox needs to give N simulated clients
their own share of one shared dataset. Doing it in one place means that all of them
agree on what "client 3 of 5" holds, that the split is reproducible from a seed (so
a benchmark run can be repeated exactly), and that non-IID schemes (Dirichlet label
skew, k classes per client, quantity skew) can be added later as new entries in
``SCHEMES`` without touching any project.

Partitions are returned as arrays of *indices* rather than data so the caller keeps
control of how samples are stored (numpy arrays, torch datasets, files on disk).

Every scheme has the signature ``scheme(labels_or_n, num_partitions, seed, **params)``
where ``labels_or_n`` is either the number of samples (schemes that ignore labels,
such as IID) or a 1-D array of labels (label-aware schemes). Schemes must assign
every sample to exactly one partition and be deterministic for a given seed.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Union

import numpy as np
import numpy.typing as npt

__all__ = ["iid", "partition_indices", "SCHEMES", "LabelsOrN"]

#: Either a sample count or the per-sample labels of the dataset being split.
LabelsOrN = Union[int, npt.ArrayLike]

#: A partitioning scheme: ``(labels_or_n, num_partitions, seed, **params) -> partitions``.
Scheme = Callable[..., list[np.ndarray]]


def _num_samples(labels_or_n: LabelsOrN) -> int:
    """Accept both a count and a label array so callers need not know what a scheme uses."""
    if isinstance(labels_or_n, (int, np.integer)) and not isinstance(labels_or_n, bool):
        return int(labels_or_n)
    arr = np.asarray(labels_or_n)
    if arr.ndim == 0:
        # A 0-d array holding a count (e.g. np.int64 wrapped by np.asarray).
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"labels_or_n must be an int or a 1-D array of labels, got {labels_or_n!r}")
        return int(arr)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    return int(arr.shape[0])


def _check_sizes(num_samples: int, num_partitions: int) -> None:
    """Reject splits that would leave a client without data.

    An empty partition is almost always a configuration mistake (too many clients for
    a small dataset) that would otherwise surface much later as a client reporting
    ``num_examples == 0`` and being silently dropped from aggregation.
    """
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
        raise ValueError(f"num_partitions must be an int, got {num_partitions!r}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_partitions > num_samples:
        raise ValueError(
            f"cannot split {num_samples} samples into {num_partitions} non-empty partitions"
        )


def iid(num_samples: int, num_partitions: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle the indices ``0..num_samples-1`` and deal them into equal shares.

    The shuffle makes each share an unbiased sample of the whole dataset (datasets are
    often stored sorted by class, so contiguous slices would be badly non-IID). Sizes
    differ by at most one so that no client dominates a weighted average by accident.
    A private ``np.random.Generator`` is used so the result depends only on ``seed``,
    never on global random state touched elsewhere in the process.

    Returns ``num_partitions`` sorted ``int64`` index arrays; sorting keeps data access
    sequential and makes the partitions easy to compare in tests.
    """
    num_samples = _num_samples(num_samples)
    _check_sizes(num_samples, num_partitions)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_samples).astype(np.int64)
    # array_split gives the first (n % k) parts one extra element: sizes differ by <= 1.
    return [np.sort(part) for part in np.array_split(perm, int(num_partitions))]


def _iid_scheme(labels_or_n: LabelsOrN, num_partitions: int, seed: int = 0) -> list[np.ndarray]:
    return iid(_num_samples(labels_or_n), num_partitions, seed=seed)


#: Registered schemes by name. Later schemes (``"dirichlet"``, ``"k_class"``,
#: ``"quantity_skew"``) are added here; their extra parameters (``alpha``, ``k``...)
#: arrive through ``partition_indices(**params)``.
SCHEMES: dict[str, Scheme] = {
    "iid": _iid_scheme,
}


def partition_indices(
    labels_or_n: LabelsOrN,
    num_partitions: int,
    scheme: str = "iid",
    seed: int = 0,
    **params: Any,
) -> list[np.ndarray]:
    """Partition a dataset by the named ``scheme``; the single entry point projects use.

    Projects call this with a scheme name that typically comes from task or sandbox
    configuration, so switching an experiment from IID to non-IID is a config change
    rather than a code change. ``labels_or_n`` may be the sample count or the label
    array; passing labels always works, since label-agnostic schemes only need the
    length.

    Raises ``ValueError`` for an unknown scheme, ``num_partitions < 1``, more
    partitions than samples, or parameters the scheme does not accept.
    """
    try:
        fn = SCHEMES[scheme]
    except KeyError:
        raise ValueError(
            f"unknown partition scheme {scheme!r}; known: {', '.join(sorted(SCHEMES))}"
        ) from None
    _check_sizes(_num_samples(labels_or_n), num_partitions)
    # Bind first so a misspelt parameter (e.g. ``alpah=``) is reported as a config error
    # rather than surfacing as a TypeError from deep inside the scheme.
    try:
        inspect.signature(fn).bind(labels_or_n, num_partitions, seed=seed, **params)
    except TypeError as exc:
        raise ValueError(f"invalid parameters for scheme {scheme!r}: {sorted(params)} ({exc})") from None
    return fn(labels_or_n, num_partitions, seed=seed, **params)
