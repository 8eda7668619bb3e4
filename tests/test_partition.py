"""fedtier.partition: every sample exactly once, balanced, reproducible, strict on errors."""
from __future__ import annotations

import numpy as np
import pytest

from fedtier.partition import SCHEMES, iid, partition_indices


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("n,k", [(1, 1), (10, 1), (10, 3), (10, 10), (1437, 5), (1797, 7), (100, 99)])
def test_iid_assigns_each_sample_exactly_once(n: int, k: int) -> None:
    parts = iid(n, k, seed=3)
    assert len(parts) == k
    _assert_exact_cover(parts, n)


@pytest.mark.parametrize("n,k", [(10, 3), (11, 4), (1437, 5), (1000, 7), (5, 5)])
def test_iid_sizes_differ_by_at_most_one(n: int, k: int) -> None:
    sizes = [len(p) for p in iid(n, k)]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == n
    assert min(sizes) >= 1


def test_iid_returns_sorted_int_arrays() -> None:
    for part in iid(50, 4):
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


def test_iid_is_deterministic_for_a_seed() -> None:
    a, b = iid(500, 5, seed=42), iid(500, 5, seed=42)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa, pb)


def test_iid_does_not_depend_on_global_random_state() -> None:
    np.random.seed(1)
    a = iid(200, 3, seed=0)
    np.random.seed(2)
    np.random.rand(10)
    b = iid(200, 3, seed=0)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa, pb)


def test_iid_different_seeds_differ() -> None:
    a, b = iid(500, 5, seed=0), iid(500, 5, seed=1)
    assert any(not np.array_equal(pa, pb) for pa, pb in zip(a, b))


def test_iid_is_shuffled_not_contiguous() -> None:
    # Datasets are often sorted by class: contiguous slices would be non-IID.
    first = iid(1000, 4, seed=0)[0]
    assert first.max() - first.min() > 500


def test_dispatcher_matches_iid_and_accepts_labels_or_count() -> None:
    labels = np.repeat(np.arange(10), 30)
    direct = iid(len(labels), 4, seed=7)
    for arg in (labels, list(labels), len(labels), np.int64(len(labels))):
        parts = partition_indices(arg, 4, scheme="iid", seed=7)
        for pa, pb in zip(parts, direct):
            np.testing.assert_array_equal(pa, pb)


def test_dispatcher_defaults_to_iid() -> None:
    for pa, pb in zip(partition_indices(100, 3), iid(100, 3, seed=0)):
        np.testing.assert_array_equal(pa, pb)


def test_iid_is_registered() -> None:
    assert "iid" in SCHEMES


def test_unknown_scheme_raises() -> None:
    with pytest.raises(ValueError, match="unknown partition scheme 'nope'.*iid"):
        partition_indices(100, 3, scheme="nope")


@pytest.mark.parametrize("k", [0, -1])
def test_too_few_partitions_raise(k: int) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        partition_indices(100, k)
    with pytest.raises(ValueError, match=">= 1"):
        iid(100, k)


def test_more_partitions_than_samples_raise() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        partition_indices(3, 4)
    with pytest.raises(ValueError, match="non-empty"):
        partition_indices(np.arange(3), 4)
    with pytest.raises(ValueError, match="non-empty"):
        iid(0, 1)


@pytest.mark.parametrize("k", [2.5, "3", True])
def test_non_integer_partition_count_raises(k: object) -> None:
    with pytest.raises(ValueError, match="must be an int"):
        partition_indices(100, k)  # type: ignore[arg-type]


def test_unknown_scheme_parameter_raises() -> None:
    with pytest.raises(ValueError, match="invalid parameters for scheme 'iid'"):
        partition_indices(100, 3, scheme="iid", alpha=0.5)


def test_multidimensional_labels_raise() -> None:
    with pytest.raises(ValueError, match="1-D"):
        partition_indices(np.zeros((10, 2)), 2)
