"""Split a dataset's sample indices among federated clients.

Every test project, benchmark and the sandbox needs to give N simulated clients
their own share of one shared dataset. Doing it in one place means that all of them
agree on what "client 3 of 5" holds, that the split is reproducible from a seed (so
a benchmark run can be repeated exactly), and that the non-IID settings studied in
the federated learning literature are a configuration change, not new code.

Schemes (``SCHEMES``; parameters are keyword arguments of ``partition_indices``):

``iid``
    Shuffle and deal into equal shares (sizes differ by at most one).
``dirichlet`` (``alpha``, ``min_size=1``)
    Label skew (Hsu et al. 2019; NIID-Bench, Li et al. 2022): for every class, the
    proportions going to each client are drawn from ``Dirichlet(alpha)``. Small alpha
    (0.05) gives clients that hold mostly one or two classes; large alpha (1000)
    approaches IID. Draws are repeated (up to ``MAX_DRAWS`` times) until every client
    holds at least ``min_size`` samples, the usual way of keeping clients non-empty
    without distorting the label proportions.
``kclass`` (``k``)
    Pathological label skew (McMahan et al. 2017): every client holds samples of
    exactly ``k`` classes. Classes are handed out so each is held by the same number
    of clients (within one); each class's samples are split evenly among its holders.
``randk`` (``min``, ``max``)
    Label skew with unequal clients (the lab's "random number of labels per client"):
    client ``i`` holds samples of ``k_i`` classes, ``k_i`` drawn uniformly in
    ``[min, max]`` from the seed, one draw per client. Otherwise as ``kclass``: classes
    are handed out so each is held by the same number of clients (within one) and each
    class's samples are split evenly among its holders.
``quantity`` (``beta``, ``min_size=1``)
    Quantity skew with IID labels: client ``i`` receives a share ``q_i`` of the
    samples, ``q ~ Dirichlet(beta)`` over the clients (NIID-Bench's quantity skew).
    ``min_size`` samples are reserved per client first, the rest is divided by ``q``:
    sizes are ``min_size + q_i * (n - clients * min_size)`` up to rounding. Small beta
    (0.1) gives a few large and many tiny clients; large beta gives equal sizes. The
    shares' variance is ``(1/P)(1 - 1/P) / (P * beta + 1)`` for P clients.
``kclass_quantity`` (``k``, ``beta``)
    Both: every client holds exactly ``k`` classes and client sizes follow
    ``Dirichlet(beta)`` shares as closely as the class sizes allow (the per-client,
    per-class counts are fitted to the target sizes by iterative proportional
    fitting, then rounded; each client gets at least one sample of each of its k
    classes).

Partitions are returned as arrays of *indices* rather than data so the caller keeps
control of how samples are stored (numpy arrays, torch datasets, files on disk).

Every scheme has the signature ``scheme(labels_or_n, num_partitions, seed, **params)``
where ``labels_or_n`` is either the number of samples (schemes that ignore labels,
such as IID) or a 1-D array of labels (label-aware schemes). Schemes assign every
sample to exactly one partition, leave no partition empty, and are deterministic for
a given seed (a private ``np.random.Generator``, never global random state).

Configuration travels as a dict ``{"scheme": "dirichlet", "alpha": 0.5, "seed": 0}``
(``partition_from_config``) or as a command-line spec ``dirichlet:alpha=0.5``
(``parse_spec``). ``summarize``/``format_summary`` describe the result per client.
"""
from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Union

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

__all__ = [
    "iid",
    "dirichlet",
    "kclass",
    "randk",
    "quantity",
    "kclass_quantity",
    "partition_indices",
    "partition_from_config",
    "resolve_config",
    "parse_spec",
    "summarize",
    "format_summary",
    "label_skew",
    "SCHEMES",
    "LabelsOrN",
    "MAX_DRAWS",
]

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


#: How many Dirichlet draws ``dirichlet`` tries before giving up on ``min_size``.
MAX_DRAWS = 100

#: Iterations of proportional fitting in ``kclass_quantity`` (converges in tens).
_IPF_ITERATIONS = 500


# ----------------------------------------------------------------------------- validation
def _labels(labels_or_n: LabelsOrN, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, class_of_sample)`` for a label-aware scheme; a bare count is an error.

    Labels may be of any sortable dtype (ints, strings); classes are the distinct
    labels present, so a class with no samples simply does not exist here.
    """
    if isinstance(labels_or_n, (int, np.integer)) or np.ndim(labels_or_n) == 0:
        raise ValueError(f"scheme {scheme!r} splits by label: pass the label array, not a sample count")
    arr = np.asarray(labels_or_n)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    classes, inverse = np.unique(arr, return_inverse=True)
    return classes, inverse.reshape(-1).astype(np.int64)


def _positive(name: str, value: Any) -> float:
    """A concentration parameter: a finite number > 0 (a bool is a config mistake)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_min_size(min_size: Any, num_samples: int, num_partitions: int) -> int:
    min_size = _integer("min_size", min_size, 1)
    if min_size * num_partitions > num_samples:
        raise ValueError(
            f"min_size={min_size} for {num_partitions} partitions needs {min_size * num_partitions} "
            f"samples, only {num_samples} available"
        )
    return min_size


# ----------------------------------------------------------------------------- building blocks
def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum exactly to ``total``.

    Floors every share, then gives the leftover units to the largest fractional parts
    (stable order, so it is deterministic). Zero total weight means equal shares.
    """
    weights = np.asarray(weights, dtype=np.float64)
    weight_sum = weights.sum()
    if not weight_sum > 0:
        weights, weight_sum = np.ones_like(weights), float(len(weights))
    raw = weights / weight_sum * total
    counts = np.floor(raw).astype(np.int64)
    leftover = int(total - counts.sum())
    if leftover > 0:
        counts[np.argsort(-(raw - counts), kind="stable")[:leftover]] += 1
    return counts


def _by_class(class_of_sample: np.ndarray, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each class's sample indices, shuffled so that splitting them picks random samples."""
    order = np.argsort(class_of_sample, kind="stable")
    bounds = np.searchsorted(class_of_sample[order], np.arange(num_classes + 1))
    return [rng.permutation(order[bounds[c]:bounds[c + 1]]) for c in range(num_classes)]


def _assemble(chunks: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.empty(0, np.int64)
            for parts in chunks]


def _assign_classes(num_classes: int, num_partitions: int, k: int | Sequence[int],
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Give every partition ``k`` distinct classes (or ``k[i]`` to partition ``i``), every
    class to (almost) equally many.

    Greedy: each partition takes the ``k`` classes held by the fewest partitions so far,
    ties broken at random. Holder counts therefore never differ by more than one, and
    every class is held as soon as the partitions' class counts add up to ``num_classes``.
    """
    ks = [int(k)] * num_partitions if isinstance(k, (int, np.integer)) else [int(v) for v in k]
    load = np.zeros(num_classes, dtype=np.int64)
    assigned = []
    for k_i in ks:
        chosen = np.sort(np.lexsort((rng.random(num_classes), load))[:k_i])
        load[chosen] += 1
        assigned.append(chosen)
    return assigned


def _check_kclass(classes: np.ndarray, class_sizes: np.ndarray, num_partitions: int, k: Any,
                  scheme: str) -> int:
    k = _integer("k", k, 1)
    if k > len(classes):
        raise ValueError(f"{scheme}: k={k} but the labels have only {len(classes)} classes")
    if num_partitions * k < len(classes):
        raise ValueError(
            f"{scheme}: {num_partitions} partitions x k={k} classes hold at most {num_partitions * k} of the "
            f"{len(classes)} classes, so some samples could not be assigned; raise k or the number of partitions"
        )
    _check_holders(classes, class_sizes, num_partitions * k, scheme, "k")
    return k


def _check_holders(classes: np.ndarray, class_sizes: np.ndarray, holdings: int, scheme: str, knob: str) -> None:
    """Every holder of a class gets one of its samples: refuse classes too small for that.

    ``holdings`` is the sum of the partitions' class counts; holder counts are the ceil
    or floor of ``holdings / classes``, so the most-held classes need that many samples.
    """
    most_holders = -(-holdings // len(classes))
    small = np.flatnonzero(class_sizes < most_holders)
    if len(small):
        c = small[0]
        raise ValueError(
            f"{scheme}: class {_plain(classes[c])!r} has {class_sizes[c]} sample(s) but up to {most_holders} partitions "
            f"must each get one of it; lower {knob} or the number of partitions"
        )


def _split_class(indices: np.ndarray, holders: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
    """Split one class's (shuffled) indices among its holders: one each, the rest by weight."""
    counts = 1 + _largest_remainder(len(indices) - len(holders), weights)
    return np.split(indices, np.cumsum(counts)[:-1])


def _kclass_split(class_of_sample: np.ndarray, classes: np.ndarray, num_partitions: int, k: int | Sequence[int],
                  rng: np.random.Generator, target_sizes: np.ndarray | None) -> list[np.ndarray]:
    """The shared body of ``kclass``, ``randk`` and ``kclass_quantity`` (``k``: one count, or one per partition).

    ``target_sizes`` None splits each class evenly among its holders. Otherwise the
    partition-by-class counts are fitted by iterative proportional fitting: start from
    the target sizes on the allowed (partition, class) cells, then alternately scale
    rows to the target sizes and columns to the class sizes. Ending on a column step
    keeps every class's total exact; row totals match the targets whenever the class
    constraints allow it, and come as close as they allow otherwise.
    """
    num_classes = len(classes)
    by_class = _by_class(class_of_sample, num_classes, rng)
    class_sizes = np.array([len(ix) for ix in by_class], dtype=np.float64)
    held = _assign_classes(num_classes, num_partitions, k, rng)
    support = np.zeros((num_partitions, num_classes), dtype=bool)
    for i, cs in enumerate(held):
        support[i, cs] = True

    if target_sizes is None:
        fitted = support.astype(np.float64)
    else:
        fitted = np.where(support, target_sizes[:, None], 0.0)
        for _ in range(_IPF_ITERATIONS):
            rows = fitted.sum(axis=1)
            fitted *= np.divide(target_sizes, rows, out=np.ones_like(rows), where=rows > 0)[:, None]
            cols = fitted.sum(axis=0)
            fitted *= np.divide(class_sizes, cols, out=np.ones_like(cols), where=cols > 0)[None, :]
            if np.allclose(fitted.sum(axis=1), target_sizes, rtol=1e-6, atol=1e-3):
                break

    chunks: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for c in range(num_classes):
        holders = np.flatnonzero(support[:, c])
        for i, part in zip(holders, _split_class(by_class[c], holders, fitted[holders, c])):
            chunks[i].append(part)
    return _assemble(chunks)


# ----------------------------------------------------------------------------- schemes
def _iid_scheme(labels_or_n: LabelsOrN, num_partitions: int, seed: int = 0) -> list[np.ndarray]:
    return iid(_num_samples(labels_or_n), num_partitions, seed=seed)


def dirichlet(labels: npt.ArrayLike, num_partitions: int, seed: int = 0, *, alpha: float,
              min_size: int = 1) -> list[np.ndarray]:
    """Label skew: each class is divided among the partitions by ``Dirichlet(alpha)`` proportions.

    The smaller ``alpha``, the more each client's label mix departs from the global one
    (alpha=0.05: one or two dominant classes; alpha=1000: close to IID). A draw that
    leaves a partition with fewer than ``min_size`` samples is discarded and redrawn
    (up to ``MAX_DRAWS`` draws); if none succeeds, ``ValueError`` says which knobs to
    turn rather than silently handing a client nothing.
    """
    classes, class_of_sample = _labels(labels, "dirichlet")
    num_samples = len(class_of_sample)
    _check_sizes(num_samples, num_partitions)
    alpha = _positive("alpha", alpha)
    min_size = _check_min_size(min_size, num_samples, num_partitions)
    rng = np.random.default_rng(seed)
    by_class = _by_class(class_of_sample, len(classes), rng)
    concentration = np.full(int(num_partitions), alpha)
    smallest = 0
    for _ in range(MAX_DRAWS):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for indices in by_class:
            shares = rng.dirichlet(concentration)
            cuts = np.clip((np.cumsum(shares)[:-1] * len(indices)).astype(np.int64), 0, len(indices))
            for i, part in enumerate(np.split(indices, cuts)):
                chunks[i].append(part)
        sizes = [sum(len(p) for p in parts) for parts in chunks]
        smallest = min(sizes)
        if smallest >= min_size:
            return _assemble(chunks)
    raise ValueError(
        f"dirichlet(alpha={alpha:g}): no draw in {MAX_DRAWS} gave all {num_partitions} partitions at least "
        f"{min_size} sample(s) (last smallest: {smallest}); use a larger alpha, fewer partitions or a "
        f"smaller min_size"
    )


def kclass(labels: npt.ArrayLike, num_partitions: int, seed: int = 0, *, k: int) -> list[np.ndarray]:
    """Pathological label skew: every partition holds samples of exactly ``k`` classes.

    Needs ``k <= classes`` and ``partitions * k >= classes`` (otherwise some class has no
    holder and its samples cannot be placed), and enough samples in each class for one
    per holder. Sizes are balanced: each class is split evenly among its holders.
    """
    classes, class_of_sample = _labels(labels, "kclass")
    _check_sizes(len(class_of_sample), num_partitions)
    class_sizes = np.bincount(class_of_sample, minlength=len(classes))
    k = _check_kclass(classes, class_sizes, num_partitions, k, "kclass")
    return _kclass_split(class_of_sample, classes, num_partitions, k, np.random.default_rng(seed), None)


def _randk_bounds(low: Any, high: Any) -> tuple[int, int]:
    """``randk``'s ``min`` and ``max`` as far as they can be checked without the labels."""
    low, high = _integer("min", low, 1), _integer("max", high, 1)
    if low > high:
        raise ValueError(f"randk: min={low} must be <= max={high}")
    return low, high


def randk(labels: npt.ArrayLike, num_partitions: int, seed: int = 0, *, min: int, max: int) -> list[np.ndarray]:
    """Label skew with a random number of labels per partition, drawn uniformly in ``[min, max]``.

    Real federations are not as regular as ``kclass``: one client sees two labels,
    another seven. Each partition's count is one uniform draw from the seed (in
    partition order, so partition ``i``'s count depends only on the seed and ``i``'s
    place), then classes are handed out as in ``kclass`` (each class to equally many
    holders, within one; each class split evenly among them).

    Every sample must have a holder, so the counts must add up to at least the number
    of classes: needs ``partitions * max >= classes``, and when a draw falls short,
    counts below ``max`` are raised by one at a time (partitions picked at random) until
    they do; the counts stay within ``[min, max]``. Needs ``1 <= min <= max <= classes``.
    """
    classes, class_of_sample = _labels(labels, "randk")
    _check_sizes(len(class_of_sample), num_partitions)
    class_sizes = np.bincount(class_of_sample, minlength=len(classes))
    low, high = _randk_bounds(min, max)
    if high > len(classes):
        raise ValueError(f"randk: max={high} but the labels have only {len(classes)} classes")
    if num_partitions * high < len(classes):
        raise ValueError(
            f"randk: {num_partitions} partitions x max={high} classes hold at most {num_partitions * high} of the "
            f"{len(classes)} classes, so some samples could not be assigned; raise max or the number of partitions"
        )
    rng = np.random.default_rng(seed)
    ks = rng.integers(low, high + 1, size=int(num_partitions))
    while ks.sum() < len(classes):
        ks[rng.choice(np.flatnonzero(ks < high))] += 1
    _check_holders(classes, class_sizes, int(ks.sum()), "randk", "max")
    return _kclass_split(class_of_sample, classes, num_partitions, ks.tolist(), rng, None)


def _quantity_shares(num_partitions: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    return rng.dirichlet(np.full(int(num_partitions), beta))


def quantity(labels_or_n: LabelsOrN, num_partitions: int, seed: int = 0, *, beta: float,
             min_size: int = 1) -> list[np.ndarray]:
    """Quantity skew: partition sizes follow ``Dirichlet(beta)`` shares, labels stay IID.

    ``min_size`` samples per partition are reserved first so no client is empty; the
    remaining samples are divided by the drawn shares (largest remainder, so the sizes
    sum exactly to the sample count). Which samples go where is a uniform shuffle.
    """
    num_samples = _num_samples(labels_or_n)
    _check_sizes(num_samples, num_partitions)
    beta = _positive("beta", beta)
    min_size = _check_min_size(min_size, num_samples, num_partitions)
    rng = np.random.default_rng(seed)
    shares = _quantity_shares(num_partitions, beta, rng)
    sizes = min_size + _largest_remainder(num_samples - min_size * int(num_partitions), shares)
    perm = rng.permutation(num_samples).astype(np.int64)
    return [np.sort(part) for part in np.split(perm, np.cumsum(sizes)[:-1])]


def kclass_quantity(labels: npt.ArrayLike, num_partitions: int, seed: int = 0, *, k: int,
                    beta: float) -> list[np.ndarray]:
    """Quantity skew combined with k classes per partition (see the module docstring).

    Target sizes are ``Dirichlet(beta)`` shares of the samples, as in ``quantity``; each
    partition holds exactly ``k`` classes, as in ``kclass``. Because a class's samples
    can only go to its holders, sizes follow the targets as closely as the class sizes
    allow: with ``partitions * k <= classes`` every class has a single holder and the
    sizes are fixed by the classes (a warning is logged). Every partition gets at least
    one sample of each of its classes.
    """
    classes, class_of_sample = _labels(labels, "kclass_quantity")
    _check_sizes(len(class_of_sample), num_partitions)
    class_sizes = np.bincount(class_of_sample, minlength=len(classes))
    k = _check_kclass(classes, class_sizes, num_partitions, k, "kclass_quantity")
    beta = _positive("beta", beta)
    if num_partitions * k <= len(classes):
        log.warning("kclass_quantity: %d partitions x k=%d classes leave every class with a single holder, so "
                    "the class sizes fix the partition sizes and beta=%g has no effect; use more partitions or "
                    "a larger k", num_partitions, k, beta)
    rng = np.random.default_rng(seed)
    targets = _quantity_shares(num_partitions, beta, rng) * len(class_of_sample)
    return _kclass_split(class_of_sample, classes, num_partitions, k, rng, targets)


#: Registered schemes by name; their extra parameters (``alpha``, ``k``...) arrive
#: through ``partition_indices(**params)``.
SCHEMES: dict[str, Scheme] = {
    "iid": _iid_scheme,
    "dirichlet": dirichlet,
    "kclass": kclass,
    "randk": randk,
    "quantity": quantity,
    "kclass_quantity": kclass_quantity,
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
    except (KeyError, TypeError):
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


# ----------------------------------------------------------------------------- configuration
def _check_params(scheme: str, params: Mapping[str, Any]) -> None:
    """Reject an unknown scheme or parameters it does not take, before any data is read."""
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; known: {', '.join(sorted(SCHEMES))}")
    try:
        inspect.signature(SCHEMES[scheme]).bind(None, 1, seed=0, **params)
    except TypeError as exc:
        raise ValueError(f"invalid parameters for scheme {scheme!r}: {sorted(params)} ({exc})") from None
    for name, value in params.items():  # what can be checked without the data, as the schemes check it
        if name in ("alpha", "beta"):
            _positive(name, value)
        elif name in ("k", "min", "max", "min_size"):
            _integer(name, value, 1)


def resolve_config(config: Mapping[str, Any] | None) -> tuple[str, int, dict[str, Any]]:
    """Split a partition config ``{"scheme": ..., "seed": ..., **params}`` and check it.

    The config usually arrives in a round's task settings, written by a person or by
    ``fedtier sandbox --partition``; checking the scheme, the seed and the parameter
    names here gives every client the same clear error instead of a TypeError from a
    scheme. ``None`` means IID with seed 0. Parameter values are checked as far as they can be
    without the data (``alpha > 0``, ``k >= 1``...); the scheme checks them against the data.
    """
    if config is None:
        return "iid", 0, {}
    if not isinstance(config, Mapping):
        raise ValueError(f"partition config must be a mapping with a 'scheme', got {config!r}")
    params = dict(config)
    scheme = params.pop("scheme", "iid")
    seed = params.pop("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"partition seed must be an int >= 0, got {seed!r}")
    _check_params(scheme, params)
    if scheme == "randk":  # its bounds need no data: refuse min > max before any is read
        _randk_bounds(params["min"], params["max"])
    return scheme, int(seed), params


def partition_from_config(labels_or_n: LabelsOrN, num_partitions: int,
                          config: Mapping[str, Any] | None) -> list[np.ndarray]:
    """``partition_indices`` driven by a config dict, as projects receive it in a task."""
    scheme, seed, params = resolve_config(config)
    return partition_indices(labels_or_n, num_partitions, scheme=scheme, seed=seed, **params)


def _parse_value(key: str, text: str, spec: str) -> int | float:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    raise ValueError(f"partition spec {spec!r}: {key}={text!r} is not a number")


def parse_spec(spec: str) -> dict[str, Any]:
    """Parse a command-line spec such as ``dirichlet:alpha=0.5`` into a config dict.

    Grammar: ``SCHEME[:KEY=VALUE[,KEY=VALUE...]]`` with numeric values (``seed`` is
    accepted as a key too), e.g. ``iid``, ``kclass:k=2``, ``quantity:beta=0.5,min_size=20``, ``randk:min=1,max=4``,
    ``kclass_quantity:k=2,beta=1,seed=3``. The result is checked like ``resolve_config``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("partition spec is empty; expected e.g. 'iid' or 'dirichlet:alpha=0.5'")
    scheme, _, rest = spec.strip().partition(":")
    config: dict[str, Any] = {"scheme": scheme.strip()}
    if rest.strip():
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key or not value.strip():
                raise ValueError(f"partition spec {spec!r}: expected KEY=VALUE, got {item.strip()!r}")
            if key in config:
                raise ValueError(f"partition spec {spec!r}: {key} given twice")
            config[key] = _parse_value(key, value.strip(), spec)
    resolve_config(config)
    return config


# ----------------------------------------------------------------------------- description
def _class_counts(labels: npt.ArrayLike, partitions: Sequence[npt.ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, counts[partition, class])``, checking the partitions index ``labels``."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    classes, class_of_sample = np.unique(arr, return_inverse=True)
    class_of_sample = class_of_sample.reshape(-1)
    counts = np.zeros((len(partitions), len(classes)), dtype=np.int64)
    for i, part in enumerate(partitions):
        idx = np.asarray(part)
        if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(arr)):
            raise ValueError(f"partition {i} holds indices outside 0..{len(arr) - 1}")
        counts[i] = np.bincount(class_of_sample[idx.astype(np.int64)], minlength=len(classes))
    return classes, counts


def _tv_distances(counts: np.ndarray) -> np.ndarray:
    """Total-variation distance of each partition's label distribution from the global one."""
    total = counts.sum(axis=0)
    global_dist = total / max(total.sum(), 1)
    sizes = counts.sum(axis=1, keepdims=True)
    local = np.divide(counts, sizes, out=np.zeros(counts.shape), where=sizes > 0)
    return 0.5 * np.abs(local - global_dist).sum(axis=1)


def label_skew(labels: npt.ArrayLike, partitions: Sequence[npt.ArrayLike]) -> float:
    """Mean over partitions of the total-variation distance from the global label mix.

    0 means every client sees the global label distribution (IID); values near 1 mean
    clients hold nearly disjoint classes. One number to compare partition schemes by.
    """
    return float(_tv_distances(_class_counts(labels, partitions)[1]).mean())


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so summaries serialise to JSON as is."""
    return value.item() if isinstance(value, np.generic) else value


def summarize(labels: npt.ArrayLike, partitions: Sequence[npt.ArrayLike]) -> list[dict[str, Any]]:
    """Per partition: ``{"partition", "size", "classes", "histogram", "tv_distance"}``.

    ``histogram`` maps every label of the dataset (zeros included, so all rows line up)
    to its count in the partition; ``classes`` is how many labels occur; ``tv_distance``
    is the partition's distance from the global label mix (see ``label_skew``).
    """
    classes, counts = _class_counts(labels, partitions)
    tv = _tv_distances(counts)
    return [
        {
            "partition": i,
            "size": int(row.sum()),
            "classes": int((row > 0).sum()),
            "histogram": {_plain(c): int(n) for c, n in zip(classes, row)},
            "tv_distance": float(tv[i]),
        }
        for i, row in enumerate(counts)
    ]


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of ``summarize``'s output: one row per client, one column per label.

    Ends with a total row and the mean total-variation distance, so a glance shows
    both how much data each client has and how skewed its labels are.
    """
    if not summary:
        return "(no partitions)"
    labels = list(summary[0]["histogram"])
    header = ["client", "size", "classes", *[str(label) for label in labels], "tv"]
    rows = [[str(s["partition"]), str(s["size"]), str(s["classes"]),
             *[str(s["histogram"].get(label, 0)) for label in labels], f"{s['tv_distance']:.3f}"]
            for s in summary]
    totals = [sum(int(s["histogram"].get(label, 0)) for s in summary) for label in labels]
    rows.append(["total", str(sum(int(s["size"]) for s in summary)), str(len(labels)), *map(str, totals), ""])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    mean_tv = sum(float(s["tv_distance"]) for s in summary) / len(summary)
    lines.append(f"mean total-variation distance from the global label mix: {mean_tv:.3f}")
    return "\n".join(lines)
