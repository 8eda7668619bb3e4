"""Streaming FedAvg: equals numpy's weighted mean, two tiers equal one, memory stays flat."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedtier.aggregators import FedAvg, Update, get_strategy
from fedtier.helpers import IncompatibleModelError, get_helper
from fedtier.helpers.format import read_model, write_model

helper = get_helper("numpy")


def make_updates(tmp_path: Path, count: int, seed: int = 0, shape=(64, 33)) -> tuple[list[Path], list[float]]:
    rng = np.random.default_rng(seed)
    paths, weights = [], []
    for i in range(count):
        path = tmp_path / f"u{seed}-{i}"
        write_model(path, {"a": rng.normal(size=shape).astype(np.float32),
                           "b": rng.normal(size=7).astype(np.float32),
                           "steps": np.array(i * 10, dtype=np.int64)})
        paths.append(path)
        weights.append(float(rng.integers(1, 500)))
    return paths, weights


def fedavg(reference: Path, paths: list[Path], weights: list[float], out: Path) -> float:
    agg = FedAvg(helper)
    agg.start(reference)
    for path, weight in zip(paths, weights):
        agg.add(Update(path, weight))
    return agg.finish(out)


def test_streaming_mean_equals_numpy_reference(tmp_path: Path) -> None:
    paths, weights = make_updates(tmp_path, 9)
    total = fedavg(paths[0], paths, weights, tmp_path / "out")
    assert total == sum(weights)
    result = read_model(tmp_path / "out")
    models = [read_model(p) for p in paths]
    for name in ("a", "b"):
        expected = np.average(np.stack([m[name] for m in models]).astype(np.float64), axis=0, weights=weights)
        np.testing.assert_allclose(result[name], expected, rtol=2e-6, atol=1e-7)
        assert result[name].dtype == np.float32
    expected_steps = np.average([m["steps"] for m in models], weights=weights)
    assert abs(int(result["steps"]) - expected_steps) <= len(paths)  # integer buffers stay integers
    assert result["steps"].dtype == np.int64


def test_two_tier_fedavg_equals_flat_fedavg(tmp_path: Path) -> None:
    paths, weights = make_updates(tmp_path, 10, seed=3)
    flat_total = fedavg(paths[0], paths, weights, tmp_path / "flat")
    # three combiners hold uneven groups; the reducer weighs each combiner model by its examples
    groups = [range(0, 2), range(2, 7), range(7, 10)]
    combiner_models, combiner_weights = [], []
    for g, members in enumerate(groups):
        out = tmp_path / f"combiner{g}"
        combiner_weights.append(fedavg(paths[0], [paths[i] for i in members], [weights[i] for i in members], out))
        combiner_models.append(out)
    two_tier_total = fedavg(paths[0], combiner_models, combiner_weights, tmp_path / "two")
    assert two_tier_total == flat_total
    flat, two = read_model(tmp_path / "flat"), read_model(tmp_path / "two")
    for name in ("a", "b"):
        np.testing.assert_allclose(two[name], flat[name], rtol=1e-5, atol=1e-6)
    # and both differ from an unweighted mean of the combiner models (the test can fail)
    naive = np.mean([read_model(p)["a"] for p in combiner_models], axis=0)
    assert not np.allclose(naive, flat["a"], rtol=1e-3)


def test_rejected_update_leaves_aggregate_unchanged(tmp_path: Path) -> None:
    paths, weights = make_updates(tmp_path, 3)
    bad_nan = tmp_path / "nan"
    model = read_model(paths[1])
    model["a"][5, 5] = np.nan
    write_model(bad_nan, model)
    bad_shape = tmp_path / "shape"
    write_model(bad_shape, {"a": np.zeros((3, 3), np.float32), "b": model["b"], "steps": model["steps"]})
    agg = FedAvg(helper)
    agg.start(paths[0])
    agg.add(Update(paths[0], weights[0]))
    for bad, error in ((bad_nan, IncompatibleModelError), (bad_shape, IncompatibleModelError)):
        with pytest.raises(error):
            agg.add(Update(bad, 100.0))
    with pytest.raises(ValueError):
        agg.add(Update(paths[1], 0.0))
    agg.add(Update(paths[1], weights[1]))
    agg.finish(tmp_path / "out")
    fedavg(paths[0], paths[:2], weights[:2], tmp_path / "clean")
    np.testing.assert_array_equal(read_model(tmp_path / "out")["a"], read_model(tmp_path / "clean")["a"])
    assert agg.num_updates == 2


def test_aggregate_one_is_the_update_itself_and_checked(tmp_path: Path) -> None:
    """One combiner: the reducer takes its model as the global one, after the same checks."""
    paths, weights = make_updates(tmp_path, 2, seed=5)
    folded = tmp_path / "folded"
    fedavg(paths[0], [paths[1]], [weights[1]], folded)
    expected_bytes = paths[1].read_bytes()
    agg = FedAvg(helper)
    agg.start(paths[0])
    out = tmp_path / "one"
    assert agg.aggregate_one(Update(paths[1], weights[1]), out) == weights[1]
    assert out.read_bytes() == expected_bytes and not paths[1].exists()  # moved, not rewritten
    for name, values in read_model(folded).items():  # the same values add/finish computes
        np.testing.assert_array_equal(read_model(out)[name], values)
    assert agg.num_updates == 1 and agg.total_weight == weights[1]

    model = read_model(paths[0])
    model["b"][3] = np.inf
    bad = tmp_path / "inf"
    write_model(bad, model)
    wrong = tmp_path / "wrong"
    write_model(wrong, {"a": np.zeros((2, 2), np.float32), "b": model["b"], "steps": model["steps"]})
    for update in (bad, wrong):
        fresh = FedAvg(helper)
        fresh.start(paths[0])
        with pytest.raises(IncompatibleModelError):
            fresh.aggregate_one(Update(update, 10.0), tmp_path / "never")
        assert update.exists() and not (tmp_path / "never").exists()  # rejected: nothing moved
    fresh = FedAvg(helper)
    fresh.start(paths[0])
    with pytest.raises(ValueError):
        fresh.aggregate_one(Update(paths[0], 0.0), tmp_path / "never")
    fresh.add(Update(paths[0], 1.0))
    with pytest.raises(ValueError):  # not a shortcut once updates were folded
        fresh.aggregate_one(Update(paths[0], 1.0), tmp_path / "never")
    assert paths[0].exists() and not (tmp_path / "never").exists()


def test_peak_memory_does_not_grow_with_updates(tmp_path: Path) -> None:
    """About 16 MB per model: the peak is a few model copies whether 2 or 12 updates arrive."""
    rng = np.random.default_rng(0)
    big = tmp_path / "big"
    write_model(big, {"w": rng.normal(size=(2048, 2048)).astype(np.float32)})
    model_bytes = 2048 * 2048 * 4

    def peak(count: int) -> int:
        agg = FedAvg(helper)
        agg.start(big)
        tracemalloc.start()
        for _ in range(count):
            agg.add(Update(big, 3.0))
        agg.finish(tmp_path / f"out{count}")
        _, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return peak_bytes

    few, many = peak(2), peak(12)
    assert many < 1.25 * few, (few, many)
    assert many < 3 * model_bytes, many


def test_unknown_strategy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'no-such'"):
        get_strategy("no-such", helper, "combiner")


def test_a_nan_deep_in_a_large_tensor_is_reported_at_its_own_element(tmp_path: Path) -> None:
    """The check reads in slices; the error must name the element in the tensor, not in the
    slice (it named the offset within the 2 MiB slice before)."""
    reference = {"w": np.zeros(3_000_000, np.float32)}
    write_model(tmp_path / "ref", reference)
    bad = np.ones(3_000_000, np.float32)
    bad[2_000_001] = np.nan
    write_model(tmp_path / "bad", {"w": bad})
    agg = FedAvg(get_helper("numpy"))
    agg.start(tmp_path / "ref")
    with pytest.raises(IncompatibleModelError, match=r"1 NaN and 0 inf values \(first at element 2000001\)"):
        agg.add(Update(tmp_path / "bad", 1.0))
    assert agg.num_updates == 0
