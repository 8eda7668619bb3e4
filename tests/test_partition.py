"""fedtier.datatools.partition: every sample exactly once, balanced, reproducible, strict on errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fedtier.datatools.partition import (
    MAX_DRAWS,
    SCHEMES,
    dirichlet,
    format_summary,
    iid,
    kclass,
    kclass_quantity,
    label_skew,
    parse_spec,
    partition_from_config,
    partition_indices,
    quantity,
    resolve_config,
    summarize,
)


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


# ============================================================================ non-IID schemes


def _labels(n: int = 3000, classes: int = 10, seed: int = 0) -> np.ndarray:
    """Unequal class sizes (like real data), shuffled so no scheme can rely on order."""
    rng = np.random.default_rng(seed)
    weights = np.linspace(1.0, 2.0, classes)
    return rng.choice(classes, size=n, p=weights / weights.sum())


#: Every registered scheme with parameters that are valid for 10 classes, 3000 samples.
SCHEME_CASES = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.05}),
    ("dirichlet", {"alpha": 0.5, "min_size": 20}),
    ("dirichlet", {"alpha": 1000.0}),
    ("kclass", {"k": 1}),
    ("kclass", {"k": 2}),
    ("kclass", {"k": 10}),
    ("randk", {"min": 1, "max": 4}),
    ("randk", {"min": 10, "max": 10}),
    ("quantity", {"beta": 0.1}),
    ("quantity", {"beta": 5, "min_size": 10}),
    ("kclass_quantity", {"k": 3, "beta": 0.5}),
]


def _sizes(parts: list[np.ndarray]) -> np.ndarray:
    return np.array([len(p) for p in parts])


def test_every_scheme_is_tested() -> None:
    assert {name for name, _ in SCHEME_CASES} == set(SCHEMES)


@pytest.mark.parametrize("scheme,params,num_partitions", [
    (scheme, params, p) for scheme, params in SCHEME_CASES for p in (1, 5, 10, 17)
    # k-class schemes need partitions * k (randk: max) >= classes (the error is tested below)
    if p * params.get("k", params.get("max", 10)) >= 10
])
def test_every_scheme_assigns_each_sample_exactly_once(scheme: str, params: dict, num_partitions: int) -> None:
    labels = _labels()
    parts = partition_indices(labels, num_partitions, scheme=scheme, seed=5, **params)
    assert len(parts) == num_partitions
    _assert_exact_cover(parts, len(labels))
    assert min(_sizes(parts)) >= params.get("min_size", 1)
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates


@pytest.mark.parametrize("scheme,params", SCHEME_CASES)
def test_every_scheme_is_deterministic_and_seed_dependent(scheme: str, params: dict) -> None:
    labels = _labels()
    np.random.seed(1)
    a = partition_indices(labels, 10, scheme=scheme, seed=11, **params)
    np.random.seed(2)  # global state must not matter
    b = partition_indices(labels, 10, scheme=scheme, seed=11, **params)
    c = partition_indices(labels, 10, scheme=scheme, seed=12, **params)
    assert all(np.array_equal(pa, pb) for pa, pb in zip(a, b))
    if not (scheme == "kclass" and params["k"] == 10):  # k = all classes: still shuffled
        assert any(not np.array_equal(pa, pc) for pa, pc in zip(a, c))


def test_label_schemes_accept_any_label_dtype() -> None:
    labels = np.array(["cat", "dog", "emu"] * 20)
    parts = kclass(labels, 6, seed=0, k=2)
    _assert_exact_cover(parts, 60)
    assert all(len(set(labels[p])) == 2 for p in parts)


# ---------------------------------------------------------------------------- kclass
@pytest.mark.parametrize("num_partitions,k", [(10, 1), (5, 2), (7, 2), (10, 3), (4, 5), (3, 10), (30, 4)])
def test_kclass_clients_hold_exactly_k_labels(num_partitions: int, k: int) -> None:
    labels = _labels()
    parts = kclass(labels, num_partitions, seed=3, k=k)
    assert [len(np.unique(labels[p])) for p in parts] == [k] * num_partitions
    # Every class is held by floor or ceil(P*k/C) clients: the load is spread evenly.
    holders = np.zeros(10, dtype=int)
    for p in parts:
        holders[np.unique(labels[p])] += 1
    assert holders.sum() == num_partitions * k
    assert holders.max() - holders.min() <= 1


def test_kclass_splits_each_class_evenly_among_its_holders() -> None:
    labels = _labels()
    parts = kclass(labels, 20, seed=0, k=2)  # each class held by 4 clients
    for c in range(10):
        counts = [int(np.sum(labels[p] == c)) for p in parts if np.any(labels[p] == c)]
        assert len(counts) == 4
        assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("num_partitions,k", [(10, 2), (20, 3), (7, 4)])
def test_kclass_quantity_clients_hold_exactly_k_labels(num_partitions: int, k: int) -> None:
    labels = _labels()
    parts = kclass_quantity(labels, num_partitions, seed=4, k=k, beta=0.3)
    assert [len(np.unique(labels[p])) for p in parts] == [k] * num_partitions


# ---------------------------------------------------------------------------- dirichlet
def test_dirichlet_small_alpha_is_skewed_and_large_alpha_near_uniform() -> None:
    labels = _labels(6000)
    skew = {alpha: np.mean([label_skew(labels, dirichlet(labels, 5, seed=s, alpha=alpha)) for s in range(5)])
            for alpha in (0.05, 0.5, 1000.0)}
    iid_skew = np.mean([label_skew(labels, iid(len(labels), 5, seed=s)) for s in range(5)])
    # alpha=0.05: clients dominated by one or two classes (TV distance near the 0.8 of 2-class clients).
    assert skew[0.05] > 0.55
    # alpha=1000: label mixes as close to the global one as a random IID split (~0.025 here), or closer.
    assert skew[1000.0] < 0.03
    assert skew[1000.0] <= iid_skew * 1.2
    assert skew[0.05] > skew[0.5] > 0.2 > skew[1000.0]


def test_dirichlet_alpha_controls_how_concentrated_each_class_is() -> None:
    labels = _labels(6000)

    def top_holder_share(alpha: float) -> float:
        """Median over classes of the share of the class held by its largest holder."""
        parts = dirichlet(labels, 5, seed=0, alpha=alpha)
        counts = np.array([np.bincount(labels[p], minlength=10) for p in parts])  # [client, class]
        return float(np.median(counts.max(axis=0) / counts.sum(axis=0)))

    assert top_holder_share(0.05) > 0.85  # each class sits almost entirely on one client
    assert top_holder_share(1000.0) < 0.25  # each class spread evenly (1/5 = 0.2 each)


def test_dirichlet_min_size_is_respected_by_redrawing() -> None:
    labels = _labels(2000)
    parts = dirichlet(labels, 10, seed=0, alpha=0.3, min_size=50)
    assert _sizes(parts).min() >= 50
    _assert_exact_cover(parts, 2000)


def test_dirichlet_impossible_min_size_says_what_to_change() -> None:
    labels = _labels(200)
    with pytest.raises(ValueError, match=f"no draw in {MAX_DRAWS}.*larger alpha"):
        dirichlet(labels, 40, seed=0, alpha=0.01, min_size=4)


# ---------------------------------------------------------------------------- quantity
def test_quantity_share_variance_matches_dirichlet_beta() -> None:
    """Var(q_i) of Dirichlet(beta) shares is (1/P)(1-1/P)/(P*beta+1): the sizes follow beta."""
    n, num_partitions, min_size = 10_000, 5, 1
    for beta in (0.2, 1.0, 10.0):
        shares = np.concatenate([
            (_sizes(quantity(n, num_partitions, seed=s, beta=beta)) - min_size) / (n - num_partitions * min_size)
            for s in range(400)
        ])
        expected = (1 / num_partitions) * (1 - 1 / num_partitions) / (num_partitions * beta + 1)
        assert shares.mean() == pytest.approx(1 / num_partitions, abs=1e-9)
        assert shares.var() == pytest.approx(expected, rel=0.15), beta


def test_quantity_small_beta_is_imbalanced_and_large_beta_balanced() -> None:
    skewed = _sizes(quantity(6000, 5, seed=0, beta=0.1))
    assert skewed.max() / skewed.sum() > 0.5  # one client holds most of the data
    balanced = _sizes(quantity(6000, 5, seed=0, beta=10_000))
    assert balanced.max() / balanced.min() < 1.1


def test_quantity_min_size_reserves_samples_and_labels_stay_iid() -> None:
    labels = _labels(6000)
    parts = quantity(labels, 10, seed=2, beta=0.1, min_size=30)
    assert _sizes(parts).min() >= 30
    big = [p for p in parts if len(p) > 1000]
    assert big and label_skew(labels, big) < 0.05  # quantity skew, not label skew


def test_kclass_quantity_sizes_follow_the_skew() -> None:
    labels = _labels(6000)

    def size_spread(beta: float) -> float:
        ratios = []
        for s in range(5):
            sizes = _sizes(kclass_quantity(labels, 10, seed=s, k=5, beta=beta))
            ratios.append(sizes.max() / sizes.min())
        return float(np.median(ratios))

    assert size_spread(0.2) > 5  # strongly imbalanced
    assert size_spread(10_000) < 1.3  # as balanced as kclass
    # Sizes track the Dirichlet targets (drawn first from the same seed, as in the scheme).
    sizes = _sizes(kclass_quantity(labels, 10, seed=7, k=5, beta=0.5))
    targets = np.random.default_rng(7).dirichlet(np.full(10, 0.5)) * len(labels)
    rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    assert np.corrcoef(rank(sizes), rank(targets))[0, 1] > 0.8


def test_kclass_quantity_with_single_holders_warns(caplog: pytest.LogCaptureFixture) -> None:
    labels = _labels()
    with caplog.at_level("WARNING", logger="fedtier.datatools.partition"):
        parts = kclass_quantity(labels, 5, seed=0, k=2, beta=0.5)
    _assert_exact_cover(parts, len(labels))
    assert "single holder" in caplog.text


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("scheme,params,match", [
    ("kclass", {"k": 11}, "only 10 classes"),
    ("kclass", {"k": 0}, "k must be >= 1"),
    ("kclass", {"k": 2.0}, "k must be an int"),
    ("kclass", {"k": True}, "k must be an int"),
    ("kclass", {"k": 1}, r"5 partitions x k=1 .* 10 classes"),
    ("kclass_quantity", {"k": 11, "beta": 1.0}, "only 10 classes"),
    ("kclass_quantity", {"k": 2, "beta": 0}, "beta must be a finite number > 0"),
    ("dirichlet", {"alpha": 0}, "alpha must be a finite number > 0"),
    ("dirichlet", {"alpha": -1.0}, "alpha must be a finite number > 0"),
    ("dirichlet", {"alpha": float("nan")}, "alpha must be a finite number > 0"),
    ("dirichlet", {"alpha": float("inf")}, "alpha must be a finite number > 0"),
    ("dirichlet", {"alpha": "0.5"}, "alpha must be a number"),
    ("dirichlet", {"alpha": 0.5, "min_size": 0}, "min_size must be >= 1"),
    ("dirichlet", {"alpha": 0.5, "min_size": 700}, "min_size=700 for 5 partitions needs 3500"),
    ("dirichlet", {}, "invalid parameters for scheme 'dirichlet'.*alpha"),
    ("dirichlet", {"alpah": 0.5}, "invalid parameters for scheme 'dirichlet'"),
    ("quantity", {"beta": -0.1}, "beta must be a finite number > 0"),
    ("quantity", {"beta": 1.0, "min_size": 601}, "min_size=601"),
    ("quantity", {"k": 2}, "invalid parameters for scheme 'quantity'"),
])
def test_bad_parameters_raise_clear_errors(scheme: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition_indices(_labels(), 5, scheme=scheme, **params)


@pytest.mark.parametrize("scheme,params", SCHEME_CASES)
def test_more_clients_than_samples_raise_for_every_scheme(scheme: str, params: dict) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        partition_indices(np.arange(4) % 2, 5, scheme=scheme, **params)


@pytest.mark.parametrize("scheme,params", [("dirichlet", {"alpha": 1.0}), ("kclass", {"k": 2}),
                                           ("kclass_quantity", {"k": 2, "beta": 1.0})])
def test_label_schemes_need_labels_not_a_count(scheme: str, params: dict) -> None:
    with pytest.raises(ValueError, match="pass the label array"):
        partition_indices(100, 5, scheme=scheme, **params)


def test_kclass_class_too_small_for_its_holders_raises() -> None:
    labels = np.array([0] * 100 + [1] * 100 + [2] * 2)
    with pytest.raises(ValueError, match="class 2 has 2 sample"):
        kclass(labels, 9, seed=0, k=1)  # each class needs 3 holders


# ---------------------------------------------------------------------------- config and spec
@pytest.mark.parametrize("spec,expected", [
    ("iid", {"scheme": "iid"}),
    (" dirichlet:alpha=0.5 ", {"scheme": "dirichlet", "alpha": 0.5}),
    ("kclass:k=2", {"scheme": "kclass", "k": 2}),
    ("quantity:beta=1e-1,min_size=20", {"scheme": "quantity", "beta": 0.1, "min_size": 20}),
    ("kclass_quantity:k=2, beta=3, seed=7", {"scheme": "kclass_quantity", "k": 2, "beta": 3, "seed": 7}),
])
def test_parse_spec(spec: str, expected: dict) -> None:
    config = parse_spec(spec)
    assert config == expected
    assert all(type(config[key]) is type(expected[key]) for key in expected)  # noqa: E721 (k stays an int)


@pytest.mark.parametrize("spec,match", [
    ("", "empty"),
    ("nope", "unknown partition scheme 'nope'"),
    ("dirichlet:alpha", "expected KEY=VALUE"),
    ("dirichlet:alpha=", "expected KEY=VALUE"),
    ("dirichlet:alpha=lots", "not a number"),
    ("dirichlet:alpha=1,alpha=2", "given twice"),
    ("dirichlet:beta=1", "invalid parameters for scheme 'dirichlet'"),
    ("iid:seed=-1", "seed must be an int >= 0"),
    ("iid:seed=1.5", "seed must be an int >= 0"),
])
def test_parse_spec_rejects_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_resolve_config_and_partition_from_config() -> None:
    assert resolve_config(None) == ("iid", 0, {})
    assert resolve_config({"scheme": "kclass", "k": 2, "seed": 3}) == ("kclass", 3, {"k": 2})
    with pytest.raises(ValueError, match="must be a mapping"):
        resolve_config("dirichlet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown partition scheme"):
        resolve_config({"scheme": ["iid"]})
    labels = _labels()
    via_config = partition_from_config(labels, 6, {"scheme": "dirichlet", "alpha": 0.3, "seed": 4})
    direct = dirichlet(labels, 6, seed=4, alpha=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(via_config, direct))


# ---------------------------------------------------------------------------- summary
def test_summarize_counts_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    summary = summarize(labels, [np.array([0, 2, 4]), np.array([1]), np.array([3, 5])])
    assert [s["size"] for s in summary] == [3, 1, 2]
    assert [s["classes"] for s in summary] == [3, 1, 2]
    assert summary[0]["histogram"] == {0: 1, 1: 1, 2: 1}
    assert summary[1]["histogram"] == {0: 1, 1: 0, 2: 0}
    # Global mix is 1/3 each: client 0 matches it, client 1 (all class 0) is 2/3 away.
    assert summary[0]["tv_distance"] == pytest.approx(0.0)
    assert summary[1]["tv_distance"] == pytest.approx(2 / 3)
    assert summary[2]["tv_distance"] == pytest.approx(1 / 3)
    assert json.loads(json.dumps(summary))[2]["histogram"] == {"0": 0, "1": 1, "2": 1}
    assert label_skew(labels, [np.array([0, 2, 4]), np.array([1]), np.array([3, 5])]) == pytest.approx(1 / 3)


def test_summarize_rejects_indices_outside_the_labels() -> None:
    with pytest.raises(ValueError, match="partition 1 holds indices outside 0..2"):
        summarize(np.array([0, 1, 2]), [np.array([0]), np.array([3])])


def test_format_summary_table() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    table = format_summary(summarize(labels, [np.array([0, 2, 4]), np.array([1, 3, 5])]))
    lines = table.splitlines()
    assert lines[0].split() == ["client", "size", "classes", "0", "1", "2", "tv"]
    assert lines[1].split() == ["0", "3", "3", "1", "1", "1", "0.000"]
    assert lines[2].split() == ["1", "3", "3", "1", "1", "1", "0.000"]
    assert lines[3].split() == ["total", "6", "3", "2", "2", "2"]
    assert lines[4].endswith("0.000")
    assert len({len(line) for line in lines[:3]}) == 1  # aligned columns
