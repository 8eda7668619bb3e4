"""The robust strategies (median, trimmed mean, Krum, Multi-Krum): against plain numpy
computed in memory, sliced finer than a tensor, every dtype; memory bounded whatever the
number of updates; what composing them over two tiers guarantees and what it does not;
their settings refused at /start with the field named."""
from __future__ import annotations

import json
import math
import os
import shutil
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from fedtier.aggregators import STRATEGIES, Strategy, Update, get_strategy, kept
from fedtier.aggregators.krum import TooFewUpdates
from fedtier.aggregators.trimmed_mean import trimmed_count
from fedtier.helpers import IncompatibleModelError, get_helper
from fedtier.helpers.format import read_model, write_model
from fedtier.round_config import RoundConfig, RoundConfigError

from test_reducer_round import reducer  # noqa: F401  (fixture: a trail with a seed)
from test_routes_input import api, app, refused  # noqa: F401  (fixtures: a seeded reducer)

helper = get_helper("numpy")
ROBUST = ("median", "trimmed_mean", "krum", "multikrum")


def random_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"w": rng.normal(size=(7, 13)).astype(np.float32),
            "h": rng.normal(size=20).astype(np.float16),
            "d": rng.normal(size=(5, 3)),
            "steps": rng.integers(0, 100, size=4).astype(np.int64),
            "mask": rng.integers(0, 2, size=6).astype(bool),
            "empty": np.zeros((0, 3), dtype=np.float32)}


def make_updates(folder: Path, count: int, seed: int = 0) -> tuple[list[Path], list[float]]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"update-{seed}-{i}"
        model = random_model(rng)
        # another writer's header (metadata) puts this one's tensors at other offsets
        write_model(path, model, metadata={"writer": "other"} if i == 1 else None)
        paths.append(path)
    return paths, [float(w) for w in rng.integers(1, 500, size=count)]


def aggregate(name: str, reference: Path, paths: list[Path], weights: list[float], out: Path,
              work: Path, **params: Any) -> float:
    """As a combiner runs a strategy: each update is the caller's file, deleted after ``add``."""
    strategy = get_strategy(name, helper, "combiner", **params)
    strategy.start(reference, kept_context(work))
    for path, weight in zip(paths, weights):
        mine = work / f"incoming-{path.name}"
        shutil.copyfile(path, mine)
        strategy.add(Update(mine, weight, sender=path.name))
        mine.unlink()  # the caller's copy goes: the strategy kept its own
    return strategy.finish(out)


def kept_context(work: Path):
    from fedtier.aggregators import RoundContext
    work.mkdir(parents=True, exist_ok=True)
    return RoundContext(work_dir=work)


def stack(paths: list[Path]) -> dict[str, np.ndarray]:
    models = [read_model(p) for p in paths]
    return {name: np.stack([m[name] for m in models]).astype(np.float64) for name in models[0]}


def stored(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """As the strategies store a float64 result in a tensor's dtype: ints and bools rounded half to even."""
    return (np.rint(values) if np.dtype(dtype).kind in "iub" else values).astype(dtype)


def assert_matches(result: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = result[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if want.dtype.kind in "iub":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            tolerance = {2: 1e-3, 4: 1e-6, 8: 1e-12}[want.dtype.itemsize]
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance, err_msg=name)


def krum_scores(paths: list[Path], f: int) -> np.ndarray:
    """Brute force: every pair's squared distance over every tensor, in float64."""
    flat = [np.concatenate([v.astype(np.float64).ravel() for v in read_model(p).values()]) for p in paths]
    n = len(flat)
    scores = []
    for i in range(n):
        distances = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(distances[:n - f - 2]))
    return np.array(scores)


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of a few elements (tensors have up to 91) and only two kept files held open,
    so slicing across tensors and reopening files are both exercised."""
    monkeypatch.setattr(kept, "BUFFER_BYTES", 8 * 7 * 5)
    monkeypatch.setattr(kept, "MAX_OPEN_FILES", 2)


@pytest.mark.parametrize("n", [5, 6])
def test_median_and_trimmed_mean_equal_numpy(tmp_path: Path, small_slices: None, n: int) -> None:
    paths, weights = make_updates(tmp_path, n, seed=n)
    values = stack(paths)
    dtypes = {name: v.dtype for name, v in read_model(paths[0]).items()}
    total = aggregate("median", paths[0], paths, weights, tmp_path / "median", tmp_path / "w1")
    assert total == sum(weights)  # the tier above still weighs this result by every example
    assert_matches(read_model(tmp_path / "median"),
                   {name: stored(np.median(v, axis=0), dtypes[name]) for name, v in values.items()})
    for beta in (0.0, 0.2, 0.4, 0.5):
        k = min(math.floor(beta * n), (n - 1) // 2)
        assert trimmed_count(beta, n) == k
        out = tmp_path / f"trimmed-{beta}"
        assert aggregate("trimmed_mean", paths[0], paths, weights, out, tmp_path / f"w-{beta}", beta=beta) == sum(weights)
        assert_matches(read_model(out), {name: stored(np.sort(v, axis=0)[k:n - k].mean(axis=0), dtypes[name])
                                         for name, v in values.items()})
    # beta = 0.5 is the median (two middle values remain for an even n), beta = 0 the unweighted mean
    assert_matches(read_model(tmp_path / "trimmed-0.5"), read_model(tmp_path / "median"))
    assert trimmed_count(0.29, 100) == 29  # 0.29 x 100 is 28.999999999999996 in floats


@pytest.mark.parametrize("n, f", [(7, 2), (6, 1), (3, 0)])
def test_krum_chooses_the_update_numpy_chooses_and_returns_it_as_it_is(tmp_path: Path, small_slices: None,
                                                                       n: int, f: int) -> None:
    paths, weights = make_updates(tmp_path, n, seed=10 + n)
    best = int(np.argmin(krum_scores(paths, f)))
    assert aggregate("krum", paths[0], paths, weights, tmp_path / "krum", tmp_path / "w", f=f) == sum(weights)
    assert (tmp_path / "krum").read_bytes() == paths[best].read_bytes()


@pytest.mark.parametrize("n, f, m", [(7, 2, 0), (7, 2, 3), (6, 1, 1), (5, 0, 0), (5, 1, 9)])
def test_multikrum_is_the_weighted_mean_of_the_best_scored(tmp_path: Path, small_slices: None,
                                                            n: int, f: int, m: int) -> None:
    paths, weights = make_updates(tmp_path, n, seed=20 + n + m)
    chosen = np.argsort(krum_scores(paths, f), kind="stable")[:min(m or n - f, n - f)]
    values = stack(paths)
    dtypes = {name: v.dtype for name, v in read_model(paths[0]).items()}
    total = aggregate("multikrum", paths[0], paths, weights, tmp_path / "mk", tmp_path / "w", f=f, m=m)
    assert total == sum(weights)  # every update's weight, chosen or not
    w = np.array(weights)[chosen]
    expected = {name: stored(np.average(v[chosen], axis=0, weights=w) if v[0].size else v[0], dtypes[name])
                for name, v in values.items()}
    assert_matches(read_model(tmp_path / "mk"), expected)
    if len(chosen) > 1:  # weighted by examples, as documented: the unweighted mean differs
        assert not np.allclose(read_model(tmp_path / "mk")["d"], values["d"][chosen].mean(axis=0))


def test_krum_with_too_few_updates_fails_naming_the_numbers(tmp_path: Path) -> None:
    paths, weights = make_updates(tmp_path, 6)
    for name in ("krum", "multikrum"):
        with pytest.raises(TooFewUpdates, match=r"f=2 needs more than 2f \+ 2 = 6 updates, and this round has 6"):
            aggregate(name, paths[0], paths, weights, tmp_path / "out", tmp_path / "w", f=2)
        strategy = get_strategy(name, helper, "reducer", f=0)
        strategy.start(paths[0])
        with pytest.raises(TooFewUpdates, match="needs more than 2f \\+ 2 = 2 updates, and this round has 1"):
            strategy.aggregate_one(Update(paths[1], 3.0), tmp_path / "one")
        assert paths[1].exists() and not (tmp_path / "one").exists()


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_one_update_is_the_result_as_it_is(tmp_path: Path, name: str) -> None:
    paths, _ = make_updates(tmp_path, 2)
    original = paths[1].read_bytes()
    strategy = get_strategy(name, helper, "reducer")
    strategy.start(paths[0])
    assert strategy.aggregate_one(Update(paths[1], 7.0), tmp_path / "out") == 7.0
    assert (tmp_path / "out").read_bytes() == original and not paths[1].exists()
    bad = tmp_path / "bad"
    write_model(bad, {"w": np.zeros(3, np.float32)})
    other = get_strategy(name, helper, "reducer")
    other.start(paths[0])
    with pytest.raises(IncompatibleModelError):
        other.aggregate_one(Update(bad, 1.0), tmp_path / "out2")


@pytest.mark.parametrize("name", ROBUST)
def test_a_refused_update_is_not_kept_and_the_arrival_verdict_stands_for_a_read(tmp_path: Path, name: str) -> None:
    paths, weights = make_updates(tmp_path, 5, seed=3)
    nan = read_model(paths[0])
    nan["w"][1, 2] = np.nan
    write_model(tmp_path / "nan", nan)
    params = {"f": 0} if "krum" in name else {}
    strategy = get_strategy(name, helper, "combiner", **params)
    strategy.start(paths[0], kept_context(tmp_path / "w"))
    with pytest.raises(IncompatibleModelError):
        strategy.add(Update(tmp_path / "nan", 1.0))
    with pytest.raises(ValueError, match="weight"):
        strategy.add(Update(paths[0], 0.0))
    for path, weight in zip(paths, weights):
        check = strategy.arrival_check(path.stat().st_size)  # the bytes as a combiner received them
        check.feed(path.read_bytes())
        strategy.add(Update(path, weight, checked=check))
    assert strategy.num_updates == 5 and strategy.finish(tmp_path / "out") == sum(weights)
    aggregate(name, paths[0], paths, weights, tmp_path / "clean", tmp_path / "w2", **params)
    assert (tmp_path / "out").read_bytes() == (tmp_path / "clean").read_bytes()


# ---- memory

MODEL_ELEMENTS = 1 << 20  # 4 MiB of float32
BUFFER = 2 << 20


def linked_updates(folder: Path, count: int, distinct: list[Path]) -> list[Path]:
    """``count`` distinct paths over a few distinct files (hard links): the reads are real."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"u{i}"
        os.link(distinct[i % len(distinct)], path)
        paths.append(path)
    return paths


def peak_of_finish(make: Callable[[], Strategy], reference: Path, paths: list[Path], out: Path) -> int:
    strategy = make()
    strategy.start(reference, kept_context(out.parent / f"work-{out.name}"))
    for path in paths:
        strategy.add(Update(path, 1.0))
    tracemalloc.start()
    try:
        strategy.finish(out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class LoadsEverything(kept.KeptUpdates):
    """What the bound rules out: every update in memory at once."""

    name = "loads_everything"

    def combine(self, out: Path) -> None:
        models = [read_model(k.path) for k in self._kept]
        write_model(out, {name: np.mean([m[name] for m in models], axis=0, dtype=models[0][name].dtype)
                          for name in models[0]}, durable=False)


@pytest.fixture(scope="module")
def distinct_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("distinct")
    rng = np.random.default_rng(5)
    paths = []
    for i in range(3):
        path = folder / f"m{i}"
        write_model(path, {"a": rng.normal(size=MODEL_ELEMENTS - 1000).astype(np.float32),
                           "b": rng.normal(size=1000).astype(np.float32)})
        paths.append(path)
    return paths


def grows_with_n(make: Callable[[], Strategy], tmp_path: Path, distinct: list[Path], few: int) -> tuple[int, int]:
    peaks = []
    for n in (few, 30):
        paths = linked_updates(tmp_path / f"n{n}", n, distinct)
        peaks.append(peak_of_finish(make, distinct[0], paths, tmp_path / f"out{n}"))
    return peaks[0], peaks[1]


@pytest.mark.parametrize("name", ROBUST)
def test_peak_memory_does_not_grow_with_the_number_of_updates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              distinct_models: list[Path], name: str) -> None:
    monkeypatch.setattr(kept, "BUFFER_BYTES", BUFFER)
    params = {"f": 1} if "krum" in name else {}
    few, many = grows_with_n(lambda: get_strategy(name, helper, "combiner", **params), tmp_path, distinct_models,
                             5 if "krum" in name else 3)
    model = MODEL_ELEMENTS * 4
    assert many <= few + (256 << 10), (few, many)  # 30 updates: no more than 5 did, give or take n x n floats
    assert many <= model + BUFFER + (2 << 20), (many, model)  # the output, the buffer and a raw slice


def test_the_memory_test_catches_an_implementation_that_loads_every_update(
        tmp_path: Path, distinct_models: list[Path]) -> None:
    few, many = grows_with_n(lambda: LoadsEverything(helper), tmp_path, distinct_models, 3)
    assert many > few + 20 * MODEL_ELEMENTS * 4  # what the bound above would refuse


# ---- two tiers: what composes and what does not

HONEST = np.linspace(0.5, 1.5, 40)


def client_update(folder: Path, name: str, attacker: bool, rng: np.random.Generator) -> Path:
    """An honest client's update is near HONEST; an attacker sends it sign-flipped and scaled."""
    values = HONEST + rng.normal(scale=0.05, size=HONEST.size)
    path = folder / name
    write_model(path, {"w": (-4.0 * values if attacker else values).astype(np.float32)})
    return path


def two_tier(tmp_path: Path, layout: list[list[bool]], at_combiners: tuple[str, dict],
             at_reducer: tuple[str, dict],
             seed: int = 0) -> np.ndarray:
    """Clients grouped by combiner (True: an attacker), each combiner reducing its clients'
    updates with ``at_combiners``, the reducer the combiner models with ``at_reducer``, weighted by
    what each combiner returns (as reducer/control.py does)."""
    rng = np.random.default_rng(seed)
    folder = tmp_path / f"{at_combiners[0]}-{at_reducer[0]}-{seed}"
    folder.mkdir()
    reference = folder / "global"
    write_model(reference, {"w": np.zeros(HONEST.size, np.float32)})
    models, weights = [], []
    for c, clients in enumerate(layout):
        updates = [client_update(folder, f"c{c}-{i}", attacker, rng) for i, attacker in enumerate(clients)]
        examples = [float(rng.integers(50, 150)) for _ in updates]
        out = folder / f"combiner{c}"
        weights.append(aggregate(at_combiners[0], reference, updates, examples, out, folder / f"w{c}", **at_combiners[1]))
        models.append(out)
    aggregate(at_reducer[0], reference, models, weights, folder / "out", folder / "wr", **at_reducer[1])
    return read_model(folder / "out")["w"].astype(np.float64)


def off(model: np.ndarray) -> float:
    return float(np.linalg.norm(model - HONEST) / np.linalg.norm(HONEST))


# Multi-Krum averages n - f updates unless told fewer: with f = 1 and two attackers it must average at most 3
ROBUST_TIERS = [("median", {}), ("trimmed_mean", {"beta": 0.4}), ("krum", {"f": 1}), ("multikrum", {"f": 1, "m": 3})]


@pytest.mark.parametrize("robust", ROBUST_TIERS, ids=[r[0] for r in ROBUST_TIERS])
def test_attackers_on_one_combiner_are_contained_by_a_robust_combiner_tier(tmp_path: Path, robust) -> None:
    layout = [[True, True, False, False, False], [False] * 5]  # 2 sign-flippers, both on combiner A
    assert off(two_tier(tmp_path, layout, ("fedavg", {}), ("fedavg", {}))) > 0.5
    assert off(two_tier(tmp_path, layout, robust, ("fedavg", {}))) < 0.1


@pytest.mark.parametrize("robust", ROBUST_TIERS, ids=[r[0] for r in ROBUST_TIERS])
def test_attackers_spread_over_combiners_need_robust_strategies_at_both_tiers(tmp_path: Path, robust) -> None:
    # 5 of 15: one each on A and B, a majority on C, which a combiner tier alone cannot contain
    layout = [[True] + [False] * 4, [True] + [False] * 4, [True, True, True, False, False]]
    # 3 combiner models: Krum needs n > 2f + 2, so f = 0; Multi-Krum then averages the best 2
    at_reducer = (robust[0], {"krum": {"f": 0}, "multikrum": {"f": 0, "m": 2}}.get(robust[0], robust[1]))
    assert off(two_tier(tmp_path, layout, robust, ("fedavg", {}))) > 0.5
    assert off(two_tier(tmp_path, layout, robust, at_reducer)) < 0.1


def test_a_median_of_combiner_medians_is_not_the_flat_median(tmp_path: Path) -> None:
    groups = [[1.0, 2.0, 9.0], [3.0, 4.0, 10.0], [5.0, 6.0, 11.0]]
    reference = tmp_path / "ref"
    write_model(reference, {"x": np.zeros(1)})
    paths = []
    for g, group in enumerate(groups):
        for i, value in enumerate(group):
            paths.append(tmp_path / f"g{g}-{i}")
            write_model(paths[-1], {"x": np.array([value])})
    medians = []
    for g in range(3):
        medians.append(tmp_path / f"median{g}")
        aggregate("median", reference, paths[3 * g:3 * g + 3], [1.0] * 3, medians[-1], tmp_path / f"w{g}")
    aggregate("median", reference, medians, [3.0] * 3, tmp_path / "two", tmp_path / "w-two")
    aggregate("median", reference, paths, [1.0] * 9, tmp_path / "flat", tmp_path / "w-flat")
    assert read_model(tmp_path / "two")["x"][0] == 4.0  # the median of 2, 4, 6
    assert read_model(tmp_path / "flat")["x"][0] == 5.0  # the median of 1..6, 9, 10, 11


# ---- settings

BAD_SETTINGS = [
    ({"aggregation": {"combiner": {"name": "trimmed_mean", "beta": 0.6}}}, "aggregation.combiner.beta", "at most 0.5"),
    ({"aggregation": {"combiner": {"name": "trimmed_mean", "beta": -0.1}}}, "aggregation.combiner.beta", "at least 0"),
    ({"aggregation": {"reducer": {"name": "trimmed_mean", "beta": "x"}}}, "aggregation.reducer.beta", "number"),
    ({"aggregation": {"combiner": {"name": "krum", "f": -1}}}, "aggregation.combiner.f", "at least 0"),
    ({"aggregation": {"combiner": {"name": "krum", "f": 1.5}}}, "aggregation.combiner.f", "integer"),
    ({"aggregation": {"combiner": {"name": "krum", "m": 2}}}, "aggregation.combiner.m", "accepted: f"),
    ({"aggregation": {"reducer": {"name": "multikrum", "m": -1}}}, "aggregation.reducer.m", "at least 0"),
    ({"aggregation": {"combiner": {"name": "median", "beta": 0.1}}}, "aggregation.combiner.beta", "accepted: none"),
    ({"aggregator": "multikrum", "aggregator_kwargs": {"f": True}}, "aggregator_kwargs.f", "number"),
]


def test_bad_robust_settings_are_a_400_naming_the_field(api) -> None:
    for settings, field, words in BAD_SETTINGS:
        with pytest.raises(RoundConfigError) as caught:
            RoundConfig.from_dict(settings)
        assert caught.value.field == field and words in str(caught.value), settings
        body = refused(api, api.post("/start", json={"rounds": 1, **settings}), 400, field)
        assert words in body["error"], body


def test_robust_settings_are_taken_and_listed_for_either_tier() -> None:
    config = RoundConfig.from_dict({"aggregation": {"combiner": {"name": "trimmed_mean", "beta": 0.5},
                                                    "reducer": {"name": "multikrum", "f": 0, "m": 2}}})
    assert config.strategy("combiner").params == {"beta": 0.5}
    assert RoundConfig.from_json(config.to_json()) == config
    for name in ROBUST:
        assert STRATEGIES[name].tiers == ("combiner", "reducer")


# ---- the bench still runs

@pytest.mark.timeout(120)
def test_robust_memory_bench_smoke(tmp_path: Path) -> None:
    from conftest import run_bench
    out = tmp_path / "robust.json"
    # three strategies of five: each runs in its own process (the bench's point), which costs a start-up
    done = run_bench("robust_memory.py", "--smoke", "--strategies", "fedavg,median,krum", "--json", str(out))
    assert "peak / fedavg" in done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert [r["strategy"] for r in result["rows"]] == ["fedavg", "median", "krum"]
    assert all(r["weight_ok"] and r["peak_rss"] > 0 and r["ratio_vs_fedavg"] > 0 for r in result["rows"])


# ---- the reducer's side: its round with a robust reducer tier (combiners faked, tests/test_reducer_round.py)

def test_a_reducer_round_with_a_robust_reducer_tier(reducer, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_reducer_round import LATEST, Control, FakeCombiner, FakeNetwork, helper as numpy_helper, model_file, \
        run_round
    import fedtier.aggregators.base as kept_module

    _, trail, _, tmp_path = reducer
    file_checks: list[Any] = []
    monkeypatch.setattr(kept_module, "check_file", lambda *args: file_checks.append(args))
    combiners = [FakeCombiner(f"c{i}", model_file(tmp_path / f"m{i}", value), 10 * (i + 1))
                 for i, value in enumerate((1.0, 4.0, 100.0))]
    median = {"combiner": {"name": "fedavg"}, "reducer": {"name": "median"}}
    config = RoundConfig.from_dict({"aggregation": median})
    round_doc, _ = run_round(trail, tmp_path / "work", combiners, monkeypatch, aggregation=config.aggregation)
    out = tmp_path / "work" / LATEST / round_doc["model_out"]
    np.testing.assert_allclose(numpy_helper.load(out)["w"], 4.0)  # the combiner model at 100 is out
    assert file_checks == []  # each combiner model was checked on arrival, not read again
    assert not list((tmp_path / "work").rglob("kept-*"))  # the round's scratch went with the round
    # Krum at the reducer with 3 combiners and f = 1 (needs 5): the round fails naming the numbers
    krum = RoundConfig.from_dict({"aggregation": {"reducer": {"name": "krum", "f": 1}}, "validate": False,
                                  "wait_for_clients": 1.0})
    control = Control(trail.state, trail, FakeNetwork(combiners), tmp_path / "work")  # type: ignore[arg-type]
    failed = control._run_round("session-1", krum)
    assert failed["status"] == "failed"
    assert "needs more than 2f + 2 = 4 updates, and this round has 3" in failed["error"], failed["error"]
    assert trail.latest()["id"] == round_doc["model_out"]  # the trail did not move
