"""Data heterogeneity for the lab: the randk partition, task schedules, client views, task metrics
and forgetting (fedtier.datatools.partition / fedtier.datatools.heterogeneity), as properties."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtier.datatools.heterogeneity import (
    MAX_TASKS,
    DataRules,
    DataRulesError,
    NoExamplesError,
    Task,
    average_forgetting,
    client_draw,
    client_view,
    client_view_for,
    forgetting,
    task_accuracies,
    task_metrics,
    task_metrics_for,
    task_of_round,
)
from fedtier.datatools.partition import parse_spec, partition_from_config, randk, resolve_config, summarize

FAST = settings(max_examples=40, deadline=None)


# ---------------------------------------------------------------------------- randk
@st.composite
def randk_cases(draw: st.DrawFn) -> tuple[np.ndarray, int, int, int, int]:
    """Labels with every class large enough for its holders, and valid (partitions, min, max)."""
    classes = draw(st.integers(1, 12))
    low = draw(st.integers(1, classes))
    high = draw(st.integers(low, classes))
    partitions = draw(st.integers(-(-classes // high), 25))
    per_class = draw(st.integers(partitions, partitions + 30))  # >= any holder count
    labels = np.repeat(np.arange(classes), per_class)
    np.random.default_rng(draw(st.integers(0, 99))).shuffle(labels)
    return labels, partitions, low, high, draw(st.integers(0, 2**32))


@FAST
@given(randk_cases())
def test_randk_covers_the_pool_disjointly_with_min_to_max_classes_per_client(
        case: tuple[np.ndarray, int, int, int, int]) -> None:
    labels, partitions, low, high, seed = case
    parts = randk(labels, partitions, seed, min=low, max=high)
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels)))  # every sample exactly once
    counts = [s["classes"] for s in summarize(labels, parts)]
    assert all(low <= c <= high for c in counts), (counts, low, high)
    again = partition_from_config(labels, partitions, {"scheme": "randk", "min": low, "max": high, "seed": seed})
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_randk_draws_vary_per_client_and_with_the_seed() -> None:
    labels = np.repeat(np.arange(10), 100)
    counts = {seed: [s["classes"] for s in summarize(labels, randk(labels, 40, seed, min=1, max=6))]
              for seed in (0, 1)}
    assert set(counts[0]) == set(range(1, 7))  # 40 uniform draws from 1..6 hit every value
    assert counts[0] != counts[1]
    # min == max is kclass's law: exactly k classes each
    assert {s["classes"] for s in summarize(labels, randk(labels, 7, 3, min=3, max=3))} == {3}


@pytest.mark.parametrize("spec,match", [
    ("randk:min=3,max=2", "min=3 must be <= max=2"),
    ("randk:min=0,max=2", "min must be >= 1"),
    ("randk:min=1", "randk.*'max'"),
    ("randk:min=1,max=2.5", "max must be an int"),
    ("randk:min=1,max=3,k=2", "invalid parameters for scheme 'randk'"),
])
def test_randk_spec_errors_name_the_parameter(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_randk_spec_and_data_dependent_errors() -> None:
    assert parse_spec("randk:min=1,max=4") == {"scheme": "randk", "min": 1, "max": 4}
    assert resolve_config({"scheme": "randk", "min": 2, "max": 2, "seed": 1}) == ("randk", 1, {"min": 2, "max": 2})
    labels = np.repeat(np.arange(10), 20)
    with pytest.raises(ValueError, match="max=11 but the labels have only 10 classes"):
        randk(labels, 5, min=1, max=11)
    with pytest.raises(ValueError, match="2 partitions x max=4 classes hold at most 8"):
        randk(labels, 2, min=1, max=4)
    with pytest.raises(ValueError, match="class 0 has 2 sample"):
        randk(np.array([0, 0] + [1] * 50), 10, min=2, max=2)


# ---------------------------------------------------------------------------- schedules
def _rules(tasks: list[tuple[list[int], int]], **kw: object) -> DataRules:
    return DataRules.from_config({"tasks": [{"classes": c, "rounds": r} for c, r in tasks], **kw})


schedules = st.lists(st.integers(1, 6), min_size=1, max_size=8).map(
    lambda rounds: [([2 * i, 2 * i + 1], r) for i, r in enumerate(rounds)])


@FAST
@given(schedules, st.integers(0, 80))
def test_every_round_has_exactly_the_task_its_cumulative_rounds_say(
        tasks: list[tuple[list[int], int]], round_number: int) -> None:
    rules = _rules(tasks)
    ends = np.cumsum([r for _, r in tasks])  # task t covers rounds (ends[t-1], ends[t]]
    task = task_of_round(rules, round_number)
    assert task is not None and 0 <= task < len(tasks)
    if round_number > ends[-1]:
        assert task == len(tasks) - 1  # the last task stays
    elif round_number >= 1:
        assert (0 if task == 0 else ends[task - 1]) < round_number <= ends[task]
    else:
        assert task == 0  # round 0: no round number given
    classes = [set(t.classes) for t in rules.tasks]
    assert all(not (a & b) for i, a in enumerate(classes) for b in classes[i + 1:])


def test_no_schedule_means_no_task_and_round_numbers_are_checked() -> None:
    assert task_of_round(DataRules(), 7) is None
    with pytest.raises(ValueError, match="round_number must be an int >= 0"):
        task_of_round(DataRules(), -1)


# ---------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("config,field", [
    ([1, 2], "heterogeneity"),
    ({"labeled": [0.5, 1]}, "heterogeneity.labeled"),
    ({"noise": [0.5, 0.1]}, "heterogeneity.noise"),
    ({"noise": [0, 101]}, "heterogeneity.noise"),
    ({"noise": [0, float("nan")]}, "heterogeneity.noise"),
    ({"noise": "0.5"}, "heterogeneity.noise"),
    ({"scale": [0, 2]}, "heterogeneity.scale"),
    ({"labelled": [0.5, 1.5]}, "heterogeneity.labelled"),
    ({"labelled": [True, 1]}, "heterogeneity.labelled"),
    ({"seed": -1}, "heterogeneity.seed"),
    ({"seed": 1.5}, "heterogeneity.seed"),
    ({"tasks": {"classes": [1]}}, "heterogeneity.tasks"),
    ({"tasks": [{"classes": [0], "rounds": 1}] * (MAX_TASKS + 1)}, "heterogeneity.tasks"),
    ({"tasks": [{"classes": [0], "rounds": 1}, 7]}, "heterogeneity.tasks[1]"),
    ({"tasks": [{"classes": [0], "rounds": 1, "epochs": 2}]}, "heterogeneity.tasks[0].epochs"),
    ({"tasks": [{"classes": [0]}]}, "heterogeneity.tasks[0].rounds"),
    ({"tasks": [{"classes": [0], "rounds": 0}]}, "heterogeneity.tasks[0].rounds"),
    ({"tasks": [{"classes": [0], "rounds": 100_001}]}, "heterogeneity.tasks[0].rounds"),
    ({"tasks": [{"classes": [], "rounds": 1}]}, "heterogeneity.tasks[0].classes"),
    ({"tasks": [{"classes": [10_000], "rounds": 1}]}, "heterogeneity.tasks[0].classes"),
    ({"tasks": [{"classes": [1, "2"], "rounds": 1}]}, "heterogeneity.tasks[0].classes"),
    ({"tasks": [{"classes": [1, 1], "rounds": 1}]}, "heterogeneity.tasks[0].classes"),
    ({"tasks": [{"classes": [0, 1], "rounds": 1}, {"classes": [2], "rounds": 1},
                {"classes": [3, 1], "rounds": 1}]}, "heterogeneity.tasks[2].classes"),
])
def test_config_errors_name_the_field(config: object, field: str) -> None:
    with pytest.raises(DataRulesError) as info:
        DataRules.from_config(config)  # type: ignore[arg-type]
    assert info.value.field == field and str(info.value).startswith(field + ": ")
    assert isinstance(info.value, ValueError)
    with pytest.raises(DataRulesError) as info:  # checked under another name (the lab's scenario)
        DataRules.from_config(config, where="data.heterogeneity")  # type: ignore[arg-type]
    assert info.value.field == "data." + field


def test_errors_do_not_echo_huge_values_and_code_built_rules_are_checked_too() -> None:
    with pytest.raises(DataRulesError) as info:
        DataRules.from_config({"tasks": [{"classes": list(range(20_000)), "rounds": 1}]})
    assert len(str(info.value)) < 200
    with pytest.raises(DataRulesError, match="heterogeneity.noise"):
        DataRules(noise=(-1.0, 0.0))
    with pytest.raises(DataRulesError, match="task.rounds"):
        Task(classes=(1,), rounds=0)


@FAST
@given(st.fixed_dictionaries({}, optional={
    "noise": st.tuples(st.floats(0, 1), st.floats(1, 2)).map(list),
    "labelled": st.floats(0, 1),
    "seed": st.integers(0, 2**63 - 1),
    "tasks": schedules.map(lambda ts: [{"classes": c, "rounds": r} for c, r in ts]),
}))
def test_config_round_trips(config: dict) -> None:
    rules = DataRules.from_config(config)
    assert DataRules.from_config(rules.to_config()) == rules
    assert DataRules.from_config(None) == DataRules.from_config({}) == DataRules()


# ---------------------------------------------------------------------------- client views
def _data(n: int = 400, classes: int = 10, features: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.random((n, features), dtype=np.float32), rng.integers(0, classes, n)


def test_identity_rules_return_the_data_themselves() -> None:
    x, y = _data()
    vx, vy = client_view(DataRules(), x, y, client_index=3, round_number=2)
    assert vx is x and vy is y


@FAST
@given(client=st.integers(0, 10_000), round_number=st.integers(1, 30), seed=st.integers(0, 1000),
       noise=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
       labelled=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted))
def test_client_view_properties(client: int, round_number: int, seed: int, noise: list[float],
                                labelled: list[float]) -> None:
    x, y = _data()
    rules = _rules([([0, 1, 2, 3, 4], 3), ([5, 6, 7, 8, 9], 4)], noise=noise, labelled=labelled, seed=seed)
    vx, vy = client_view(rules, x, y, client_index=client, round_number=round_number)
    again_x, again_y = client_view(rules, x, y, client_index=client, round_number=round_number)
    np.testing.assert_array_equal(vx, again_x)  # deterministic per client
    np.testing.assert_array_equal(vy, again_y)
    task = rules.tasks[task_of_round(rules, round_number)]
    assert set(np.unique(vy)) <= set(task.classes)  # only the current task's classes
    draw = client_draw(rules, client)
    assert noise[0] <= draw.noise <= noise[1] and labelled[0] <= draw.labelled <= labelled[1]
    in_task = np.flatnonzero(np.isin(y, task.classes))
    assert len(vy) == max(1, round(draw.labelled * len(in_task)))  # the labelled fraction, >= 1
    # the kept examples are the client's own (labels intact), features moved by exactly the noise
    rows = {r.tobytes(): i for i, r in enumerate(x)}
    assert vx.dtype == x.dtype and vx.shape[1:] == x.shape[1:]
    if draw.noise == 0.0:
        assert all(r.tobytes() in rows for r in vx)
        assert all(y[rows[r.tobytes()]] == label for r, label in zip(vx, vy))


def test_noise_std_and_scale_are_what_the_client_drew() -> None:
    x, y = np.zeros((2000, 50), np.float32) + 2.0, np.zeros(2000, np.int64)
    rules = DataRules(noise=(0.1, 0.9), scale=(0.5, 3.0), seed=4)
    stds = []
    for client in range(6):
        draw = client_draw(rules, client)
        vx, vy = client_view(rules, x, y, client_index=client, round_number=1)
        assert len(vy) == 2000
        assert abs(vx.mean() - 2.0 * draw.scale) < 0.01
        assert vx.std() == pytest.approx(draw.noise, rel=0.02)
        stds.append(draw.noise)
    assert len(set(stds)) == 6 and all(0.1 <= s <= 0.9 for s in stds)
    # reproducible from (seed, client_index) alone, whatever else was drawn before
    assert client_draw(rules, 5) == client_draw(DataRules(noise=(0.1, 0.9), scale=(0.5, 3.0), seed=4), 5)
    assert client_draw(rules, 5) != client_draw(DataRules(noise=(0.1, 0.9), scale=(0.5, 3.0), seed=5), 5)


def test_labelled_subset_is_stable_and_at_least_one_example() -> None:
    x, y = _data(n=50)
    rules = DataRules(labelled=(0.0, 0.0))
    views = [client_view(rules, x, y, client_index=2, round_number=r)[1] for r in (1, 2, 9)]
    assert all(len(v) == 1 for v in views)
    rules = DataRules(labelled=(0.3, 0.3))
    kept = [client_view(rules, x, y, client_index=2, round_number=r)[0] for r in (1, 5)]
    np.testing.assert_array_equal(kept[0], kept[1])  # the same examples every round
    assert len(kept[0]) == 15


def test_a_client_without_the_tasks_classes_gets_a_clear_error() -> None:
    x, y = _data(n=20, classes=3)  # labels 0..2 only
    rules = _rules([([0, 1, 2], 2), ([7, 8], 2)])
    assert len(client_view(rules, x, y, client_index=4, round_number=2)[1]) == 20
    with pytest.raises(NoExamplesError, match=r"client 4 has no training examples in round 3 \(task 1, classes \[7, 8\]\)"):
        client_view(rules, x, y, client_index=4, round_number=3)
    with pytest.raises(ValueError, match="same number of examples"):
        client_view(rules, x, y[:-1], client_index=4, round_number=1)


class _Ctx:
    def __init__(self, config: dict, partition_index: int = 1, round_number: int = 4) -> None:
        self.config, self.partition_index, self.round_number = config, partition_index, round_number


def test_ctx_helpers_are_no_ops_without_heterogeneity() -> None:
    x, y = _data()
    vx, vy = client_view_for(_Ctx({"partition": {"scheme": "iid"}}), x, y)
    assert vx is x and vy is y
    assert task_metrics_for(_Ctx({}), y, y) == {}
    config = {"heterogeneity": {"tasks": [{"classes": [0, 1], "rounds": 3}, {"classes": [2], "rounds": 3}]}}
    assert set(np.unique(client_view_for(_Ctx(config), x, y)[1])) == {2}  # round 4 is task 1
    with pytest.raises(DataRulesError, match="heterogeneity.nois"):
        client_view_for(_Ctx({"heterogeneity": {"nois": 1}}), x, y)


# ---------------------------------------------------------------------------- metrics and forgetting
def test_task_metrics_by_hand() -> None:
    rules = _rules([([0, 1], 1), ([2, 3], 1), ([8], 1)])
    y_true = np.array([0, 1, 2, 3, 3, 4])
    y_pred = np.array([0, 0, 2, 3, 1, 4])
    metrics = task_metrics(rules, y_true, y_pred)
    assert metrics == {"task_0_test_accuracy": 0.5, "task_1_test_accuracy": pytest.approx(2 / 3)}  # no 8s: no key
    assert task_accuracies({**metrics, "test_accuracy": 0.7, "task_x_test_accuracy": 1.0}) == {0: 0.5, 1: pytest.approx(2 / 3)}
    assert set(task_metrics(rules, y_true, y_pred, prefix="val")) == {"task_0_val_accuracy", "task_1_val_accuracy"}
    assert task_metrics(DataRules(), y_true, y_pred) == {}


def test_forgetting_on_hand_made_histories() -> None:
    history = [
        {0: 0.2, 1: 0.0},   # round 1: task 0 training
        {0: 0.9, 1: 0.0},   # round 2
        {0: 0.6, 1: 0.5},   # round 3: task 1 training, task 0 fading
        {0: 0.3, 1: 0.8},   # round 4 (last)
    ]
    assert forgetting(history) == pytest.approx({0: 0.6, 1: -0.3})  # 0.9 - 0.3; 0.5 - 0.8 < 0 is kept
    assert average_forgetting(history, current_task=1) == pytest.approx(0.6)  # only finished task 0
    assert average_forgetting(history, current_task=0) is None
    assert average_forgetting(history, current_task=None) is None
    assert forgetting([]) == {} and forgetting([{0: 0.5}]) == {}
    # a task missing from earlier rounds (no test examples yet) is measured from when it appears
    assert forgetting([{0: 0.5}, {0: 0.7, 2: 0.4}, {0: 0.7, 2: 0.1}]) == pytest.approx({0: 0.0, 2: 0.3})


@FAST
@given(st.lists(st.dictionaries(st.integers(0, 4), st.floats(0, 1), min_size=5, max_size=5), min_size=2, max_size=10))
def test_forgetting_is_bounded_by_the_accuracies(history: list[dict[int, float]]) -> None:
    result = forgetting(history)
    assert set(result) == set(range(5))
    for task, value in result.items():
        assert value == pytest.approx(max(h[task] for h in history[:-1]) - history[-1][task])
        assert -1.0 <= value <= 1.0
