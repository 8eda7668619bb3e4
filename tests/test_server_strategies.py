"""Server optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad) and FedProx's server side:
each against a plain numpy reference over several rounds, their state across rounds and
across a reducer restart, two tiers equal to one for every linear strategy whatever the
split of clients over combiners, and the tiers they are refused at (issue 15)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtier.aggregators import COMBINER, REDUCER, STRATEGIES, RoundContext, Strategy, StrategyError, Update, \
    get_strategy
from fedtier.helpers import get_helper
from fedtier.helpers.format import read_model, write_model as write_durably
from fedtier.reducer.control import LATEST, Control
from fedtier.reducer.trail import ModelTrail
from fedtier.round_config import RoundConfig, RoundConfigError
from fedtier.storage.local import LocalModelStore
from fedtier.storage.sqlite import SQLiteStateStore
from test_reducer_round import FakeCombiner, FakeNetwork
from test_routes_input import api, app, refused  # noqa: F401 (fixtures)

helper = get_helper("numpy")
OPTIMISERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")
SETTINGS: dict[str, dict[str, float]] = {  # not the defaults, so every parameter is exercised
    "fedavgm": {"server_lr": 0.7, "momentum": 0.8},
    "fedadam": {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 0.01},
    "fedyogi": {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 0.01},
    "fedadagrad": {"eta": 0.05, "beta_1": 0.5, "tau": 0.01},
}
Weights = dict[str, np.ndarray]


def write_model(path: Path, weights: Weights, metadata: dict[str, str] | None = None) -> None:
    write_durably(path, weights, metadata, durable=False)  # scratch: an fsync per file is most of the time


# ---------------------------------------------------------------------------- the numpy reference
class Reference:
    """The optimisers as the papers write them, on whole float64 arrays in memory."""

    def __init__(self, name: str, params: dict[str, float]) -> None:
        self.name, self.p = name, {**{k: v.default for k, v in STRATEGIES[name].params.items()}, **params}
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, key: str, x: np.ndarray, mean: np.ndarray) -> np.ndarray:
        p, delta = self.p, mean - x
        if self.name == "fedavgm":
            self.m[key] = p["momentum"] * self.m.get(key, 0.0) + delta
            return x + p["server_lr"] * self.m[key]
        m = self.m.get(key, np.zeros_like(x))
        v = self.v.get(key, np.full_like(x, p["tau"] ** 2))
        m = p["beta_1"] * m + (1 - p["beta_1"]) * delta
        if self.name == "fedadam":
            v = p["beta_2"] * v + (1 - p["beta_2"]) * delta ** 2
        elif self.name == "fedyogi":
            v = v - (1 - p["beta_2"]) * delta ** 2 * np.sign(v - delta ** 2)
        else:
            v = v + delta ** 2
        self.m[key], self.v[key] = m, v
        return x + p["eta"] * m / (np.sqrt(v) + p["tau"])


def weighted_mean(updates: list[Weights], weights: list[float]) -> Weights:
    return {key: sum(w * u[key].astype(np.float64) for u, w in zip(updates, weights)) / sum(weights)
            for key in updates[0]}


def aggregate(strategy: Strategy, reference: Path, updates: list[tuple[Path, float]], out: Path,
              tier: str = REDUCER) -> float:
    """As the reducer's _aggregate does: a single update goes through aggregate_one if the
    strategy has that shortcut, any other round through add/finish."""
    strategy.start(reference, RoundContext(tier=tier, work_dir=out.parent))
    if len(updates) == 1:
        (path, weight), = updates
        done = strategy.aggregate_one(Update(path, weight), out)
        if done is not None:
            return done
    for path, weight in updates:
        strategy.add(Update(path, weight))
    return strategy.finish(out)


def model(rng: np.random.Generator, scale: float = 1.0, counter: int = 0) -> Weights:
    return {"w": (scale * rng.normal(size=(5, 7))).astype(np.float32),
            "b": (scale * rng.normal(size=7)).astype(np.float32),
            "h": scale * rng.normal(size=3),  # float64: its moments are float64 too
            "num_batches_tracked": np.array(counter, dtype=np.int64)}


@pytest.mark.parametrize("name", OPTIMISERS)
def test_each_optimiser_equals_the_numpy_reference_over_rounds(name: str, tmp_path: Path) -> None:
    """Four rounds of three weighted updates: the streaming strategy, one instance kept across
    rounds as the reducer keeps it, matches the formulas in float64 up to float32 rounding;
    the integer counter takes the plain mean and no moment."""
    rng = np.random.default_rng(7)
    strategy = get_strategy(name, helper, REDUCER, **SETTINGS[name])
    reference = Reference(name, SETTINGS[name])
    current = tmp_path / "x0"
    write_model(current, model(rng))
    expected = {k: v.astype(np.float64) for k, v in read_model(current).items()}
    for round_number in range(1, 5):
        x = read_model(current)
        updates = [{**{k: x[k] + model(rng, 0.1)[k].astype(x[k].dtype) for k in ("w", "b", "h")},
                    "num_batches_tracked": np.array(10 * round_number, dtype=np.int64)} for _ in range(3)]
        weights = [float(rng.integers(1, 100)) for _ in updates]
        paths = []
        for i, update in enumerate(updates):
            paths.append(tmp_path / f"u{round_number}-{i}")
            write_model(paths[-1], update)
        out = tmp_path / f"x{round_number}"
        assert aggregate(strategy, current, list(zip(paths, weights)), out) == sum(weights)
        mean = weighted_mean(updates, weights)
        expected = {k: reference.step(k, expected[k], mean[k]) for k in ("w", "b", "h")}
        got = read_model(out)
        for key in ("w", "b", "h"):
            assert got[key].dtype == x[key].dtype
            np.testing.assert_allclose(got[key], expected[key], rtol=2e-5, atol=2e-6, err_msg=f"{name} {key}")
        assert got["num_batches_tracked"] == 10 * round_number
        current = out
    assert strategy.steps == 4


@pytest.mark.parametrize("name", OPTIMISERS)
def test_the_state_is_a_model_file_and_a_reloaded_state_continues_exactly(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_model(tmp_path / "x0", model(rng))
    rounds = [[(tmp_path / f"u{r}{i}", float(i + 1)) for i in range(2)] for r in range(3)]
    for r, updates in enumerate(rounds):
        for path, _ in updates:
            write_model(path, model(rng, counter=r))
    whole = get_strategy(name, helper, REDUCER, **SETTINGS[name])
    for r, updates in enumerate(rounds):
        aggregate(whole, tmp_path / f"x{r}", updates, tmp_path / f"x{r + 1}")
    # two rounds, the state saved, a new instance loads it and takes the third
    first = get_strategy(name, helper, REDUCER, **SETTINGS[name])
    for r, updates in enumerate(rounds[:2]):
        aggregate(first, tmp_path / f"x{r}", updates, tmp_path / f"y{r + 1}")
    assert first.save_state(tmp_path / "state")
    state = read_model(tmp_path / "state")
    assert {key.split("/")[1] for key in state} == {"w", "b", "h"}  # no moment for the counter
    assert all(state[key].dtype == (np.float64 if key.endswith("/h") else np.float32) for key in state)
    again = get_strategy(name, helper, REDUCER, **SETTINGS[name])
    again.load_state(tmp_path / "state")
    aggregate(again, tmp_path / "x2", rounds[2], tmp_path / "y3")
    assert again.steps == 3
    assert (tmp_path / "y3").read_bytes() == (tmp_path / "x3").read_bytes()
    # a fresh instance takes another step: the state is what made the third round
    fresh = get_strategy(name, helper, REDUCER, **SETTINGS[name])
    aggregate(fresh, tmp_path / "x2", rounds[2], tmp_path / "z3")
    assert (tmp_path / "z3").read_bytes() != (tmp_path / "x3").read_bytes()


def test_a_state_that_is_not_this_strategys_or_this_models_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_model(tmp_path / "x0", {"w": np.zeros(4, np.float32)})
    write_model(tmp_path / "u", {"w": rng.normal(size=4).astype(np.float32)})
    adam = get_strategy("fedadam", helper, REDUCER)
    aggregate(adam, tmp_path / "x0", [(tmp_path / "u", 1.0)], tmp_path / "x1")
    adam.save_state(tmp_path / "state")
    with pytest.raises(StrategyError, match="not a state of strategy 'fedyogi'"):
        get_strategy("fedyogi", helper, REDUCER).load_state(tmp_path / "state")
    with pytest.raises(StrategyError, match="keeps no state"):
        get_strategy("fedavg", helper, REDUCER).load_state(tmp_path / "state")
    other = get_strategy("fedadam", helper, REDUCER)
    other.load_state(tmp_path / "state")
    write_model(tmp_path / "bigger", {"w": np.zeros(5, np.float32)})
    with pytest.raises(StrategyError, match="does not match the model: tensor 'w'"):
        other.start(tmp_path / "bigger")
    write_model(tmp_path / "renamed", {"v": np.zeros(4, np.float32)})
    with pytest.raises(StrategyError, match="does not match the model"):
        other.start(tmp_path / "renamed")
    (tmp_path / "damaged").write_bytes((tmp_path / "state").read_bytes()[:-3])
    with pytest.raises(StrategyError, match="cannot be read"):
        get_strategy("fedadam", helper, REDUCER).load_state(tmp_path / "damaged")
    # a moment missing for one tensor
    write_model(tmp_path / "partial", {"m/w": np.zeros(4, np.float32)},
                metadata={"format": "fedtier-strategy-state/1", "strategy": "fedadam", "steps": "1"})
    with pytest.raises(StrategyError, match="every moment"):
        get_strategy("fedadam", helper, REDUCER).load_state(tmp_path / "partial")


@pytest.mark.parametrize("name", OPTIMISERS)
def test_one_combiner_is_stepped_too_not_passed_through(name: str, tmp_path: Path) -> None:
    """FedAvg's shortcut for a single update (its model as it is) would skip the step."""
    write_model(tmp_path / "x0", {"w": np.zeros(3, np.float32)})
    write_model(tmp_path / "u", {"w": np.ones(3, np.float32)})
    strategy = get_strategy(name, helper, REDUCER)
    assert strategy.aggregate_one(Update(tmp_path / "u", 1.0), tmp_path / "x1") is None
    aggregate(strategy, tmp_path / "x0", [(tmp_path / "u", 1.0)], tmp_path / "x1")
    assert not np.allclose(read_model(tmp_path / "x1")["w"], 1.0) or name == "fedavgm"
    assert strategy.steps == 1 and (tmp_path / "u").exists()


# ---------------------------------------------------------------------------- across a reducer restart
@pytest.fixture
def trail_at(tmp_path: Path) -> Callable[[str], tuple[ModelTrail, SQLiteStateStore]]:
    """A reducer's stores under tmp_path/<name>, seeded alike; opened again with the same
    name, the same stores (a restarted reducer)."""
    opened: list[SQLiteStateStore] = []
    seed = tmp_path / "seed"
    write_model(seed, {"w": np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64),
                       "count": np.array(0, dtype=np.int64)})

    def open_trail(name: str) -> tuple[ModelTrail, SQLiteStateStore]:
        state = SQLiteStateStore(tmp_path / name / "state.sqlite")
        opened.append(state)
        trail = ModelTrail(LocalModelStore(tmp_path / name / "models"), state)
        if trail.latest() is None:
            trail.commit(seed, parent_id=None, kind="seed")
        return trail, state

    yield open_trail
    for state in opened:
        state.close()


def combiners(tmp_path: Path) -> list[FakeCombiner]:
    rng = np.random.default_rng(11)
    made = []
    for i, examples in enumerate((30, 50)):
        path = tmp_path / f"combiner-{i}"
        write_model(path, {"w": rng.normal(size=(64, 64)).astype(np.float32), "count": np.array(3, dtype=np.int64)})
        made.append(FakeCombiner(f"c{i}", path, examples))
    return made


def run_rounds(trail: ModelTrail, work_dir: Path, fakes: list[FakeCombiner], session: str, count: int,
               config: RoundConfig) -> list[dict[str, Any]]:
    control = Control(trail.state, trail, FakeNetwork(fakes), work_dir)  # type: ignore[arg-type]
    done = []
    for _ in range(count):
        round_doc = control._run_round(session, config)
        assert round_doc["status"] == "success", round_doc["error"]
        done.append(trail.get(round_doc["model_out"]))
    return done


def model_bytes(trail: ModelTrail, record: dict[str, Any], path: Path) -> bytes:
    trail.fetch(record["id"], path)
    return path.read_bytes()


def test_a_restarted_reducer_continues_with_the_same_moments_and_a_new_session_starts_afresh(
        trail_at, tmp_path: Path) -> None:
    config = RoundConfig.from_dict({"validate": False, "wait_for_clients": 1.0,
                                    "aggregation": {"reducer": {"name": "fedadam", "eta": 0.05}}})
    fakes = combiners(tmp_path)
    # uninterrupted: three rounds in one process
    trail, _ = trail_at("straight")
    straight = run_rounds(trail, tmp_path / "straight" / "work", fakes, "s1", 3, config)
    assert all(r["strategy_state"]["strategy"] == "fedadam" for r in straight)
    # interrupted: two rounds, then a new Control on the same stores (the process is gone,
    # and with it the live strategy) takes the third
    trail, state = trail_at("restarted")
    before = run_rounds(trail, tmp_path / "restarted" / "work", fakes, "s1", 2, config)
    state.close()
    trail, _ = trail_at("restarted")
    after = run_rounds(trail, tmp_path / "restarted" / "work", fakes, "s1", 1, config)
    assert after[0]["parent_id"] == before[1]["id"]
    assert model_bytes(trail, after[0], tmp_path / "a") == model_bytes(trail_at("straight")[0], straight[2],
                                                                       tmp_path / "b")
    # a new session from that model starts with fresh moments: its round is a fresh FedAdam's
    (fresh_round,) = run_rounds(trail, tmp_path / "restarted" / "work", fakes, "s2", 1, config)
    fresh = get_strategy("fedadam", helper, REDUCER, eta=0.05)
    base = tmp_path / "base"
    trail.fetch(after[0]["id"], base)
    aggregate(fresh, base, [(c.model, float(c.examples)) for c in fakes], tmp_path / "expected")
    assert model_bytes(trail, fresh_round, tmp_path / "c") == (tmp_path / "expected").read_bytes()
    # the kept copy of the latest model is the next round's base (not the moments)
    assert (tmp_path / "restarted" / "work" / LATEST / fresh_round["id"]).is_file()


# ---------------------------------------------------------------------------- two tiers equal one
LINEAR = ("fedavg", "fedprox") + OPTIMISERS
SIZE = 6


def write_all(directory: Path, prefix: str, arrays: list[np.ndarray]) -> list[Path]:
    paths = []
    for i, values in enumerate(arrays):
        paths.append(directory / f"{prefix}{i}")
        write_model(paths[-1], {"w": values})
    return paths


@pytest.mark.parametrize("name", LINEAR)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_two_tiers_equal_one_for_every_linear_strategy_whatever_the_split(name: str, data: st.DataObject) -> None:
    """Clients split over combiners any way: FedAvg (FedProx's server side) at the combiners,
    the combiner models weighted by their examples at the reducer, and the strategy there,
    give over two rounds what the strategy gives on all the clients' updates at once.
    Server optimisers run at the reducer only, so their two-tier form is FedAvg below them."""
    combiner_strategy = name if COMBINER in STRATEGIES[name].tiers else "fedavg"
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
        write_model(work / "two-0", {"w": rng.normal(size=SIZE).astype(np.float32)})
        (work / "flat-0").write_bytes((work / "two-0").read_bytes())
        two_tier, flat = get_strategy(name, helper, REDUCER), get_strategy(name, helper, REDUCER)
        for r in range(2):
            clients = data.draw(st.integers(1, 8), label="clients")
            combiner_of = data.draw(st.lists(st.integers(0, 3), min_size=clients, max_size=clients), label="split")
            examples = data.draw(st.lists(st.integers(1, 10_000), min_size=clients, max_size=clients),
                                 label="examples")
            updates = write_all(work, f"client-{r}-",
                                [rng.normal(size=SIZE).astype(np.float32) for _ in range(clients)])
            parts = []
            for c in sorted(set(combiner_of)):
                mine = [(u, float(e)) for u, e, k in zip(updates, examples, combiner_of) if k == c]
                out = work / f"combiner-{r}-{c}"
                total = aggregate(get_strategy(combiner_strategy, helper, COMBINER), work / f"two-{r}",
                                  [(_copy(u), w) for u, w in mine], out, COMBINER)
                assert total == sum(w for _, w in mine)
                parts.append((out, total))  # the reducer's weight: the combiner's examples
            aggregate(two_tier, work / f"two-{r}", parts, work / f"two-{r + 1}")
            aggregate(flat, work / f"flat-{r}", [(u, float(e)) for u, e in zip(updates, examples)],
                      work / f"flat-{r + 1}")
            np.testing.assert_allclose(read_model(work / f"two-{r + 1}")["w"], read_model(work / f"flat-{r + 1}")["w"],
                                       rtol=1e-5, atol=1e-6)


def _copy(path: Path) -> Path:
    """The update's own copy for the combiner: a one-update round moves its file (aggregate_one)."""
    copy = path.with_name(f"copy-{path.name}")
    copy.write_bytes(path.read_bytes())
    return copy


# ---------------------------------------------------------------------------- where they are refused
@pytest.mark.parametrize("name", OPTIMISERS)
def test_server_optimisers_run_at_the_reducer_only(name: str) -> None:
    assert STRATEGIES[name].tiers == (REDUCER,) and STRATEGIES[name].stateful
    with pytest.raises(RoundConfigError) as per_tier:
        RoundConfig.from_dict({"aggregation": {"combiner": {"name": name}}})
    assert per_tier.value.field == "aggregation.combiner.name"
    assert f'{{"aggregation": {{"reducer": "{name}"}}}}' in str(per_tier.value)
    with pytest.raises(RoundConfigError) as legacy:
        RoundConfig.from_dict({"aggregator": name})
    assert legacy.value.field == "aggregator" and "both tiers" in str(legacy.value)
    with pytest.raises(StrategyError, match="not at the combiner tier"):
        get_strategy(name, helper, COMBINER)
    chosen = RoundConfig.from_dict({"aggregation": {"reducer": name}})
    assert chosen.strategy(COMBINER).name == "fedavg" and chosen.strategy(REDUCER).name == name
    assert chosen.client_settings() == {}


def test_fedprox_runs_at_both_tiers_and_gives_its_clients_mu() -> None:
    assert STRATEGIES["fedprox"].tiers == (COMBINER, REDUCER) and not STRATEGIES["fedprox"].stateful
    assert RoundConfig.from_dict({"aggregator": "fedprox"}).client_settings() == {"mu": 0.01}
    config = RoundConfig.from_dict({"aggregation": {"combiner": {"name": "fedprox", "mu": 0.5},
                                                    "reducer": "fedadam"}})
    assert config.client_settings() == {"mu": 0.5}


REFUSED = [
    ({"aggregation": {"combiner": "fedadam"}}, "aggregation.combiner.name", "runs only at the reducer tier"),
    ({"aggregation": {"combiner": {"name": "fedavgm", "momentum": 0.5}}}, "aggregation.combiner.name", "reducer"),
    ({"aggregator": "fedyogi"}, "aggregator", "sets one strategy for both tiers"),
    ({"aggregation": {"reducer": {"name": "fedadam", "beta_1": 1.0}}}, "aggregation.reducer.beta_1", "at most 0.999"),
    ({"aggregation": {"reducer": {"name": "fedadagrad", "beta_2": 0.9}}}, "aggregation.reducer.beta_2",
     "takes no parameter"),
    ({"aggregation": {"combiner": {"name": "fedprox", "mu": -1}}}, "aggregation.combiner.mu", "at least 0"),
]


def test_start_refuses_them_where_they_make_no_sense_naming_the_field(api) -> None:  # noqa: F811
    for settings_, field, said in REFUSED:  # one reducer for all: each refusal leaves it as it was
        body = refused(api, api.post("/start", json={"rounds": 1, **settings_}), 400, field)
        assert said in body["error"], body
