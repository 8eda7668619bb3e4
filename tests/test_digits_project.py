"""The digits test project, run directly (no network): in-process and command entry points."""
from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import pytest
import torch
import yaml

from fedtier.client.context import TaskContext
from fedtier.helpers import get_helper

PROJECT = Path(__file__).resolve().parent.parent / "test_projects" / "digits"
PROJECT_MODULES = ("model", "data", "entrypoints", "seed", "train", "validate")
NUM_PARTITIONS = 3


@pytest.fixture(scope="module")
def project() -> Iterator[dict[str, ModuleType]]:
    """Import the project's modules the way the client does (project dir on sys.path).

    Their generic names (model, data...) are removed from sys.modules afterwards so
    they cannot shadow another project's modules in later tests.
    """
    saved = {name: sys.modules.pop(name) for name in PROJECT_MODULES if name in sys.modules}
    sys.path.insert(0, str(PROJECT))
    try:
        yield {name: importlib.import_module(name) for name in ("model", "data", "entrypoints", "seed")}
    finally:
        sys.path.remove(str(PROJECT))
        for name in PROJECT_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def seed_model(project: dict[str, ModuleType], tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("seed") / "seed.model")
    project["seed"].make_seed(path)
    return path


def _ctx(index: int, round_id: str = "r1", **config: object) -> TaskContext:
    return TaskContext(
        client_name=f"client-{index}",
        partition_index=index,
        num_partitions=NUM_PARTITIONS,
        round_id=round_id,
        config=config,
    )


def _same_state(a: "OrderedDict[str, torch.Tensor]", b: "OrderedDict[str, torch.Tensor]") -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_fedn_yaml_entry_points_resolve(project: dict[str, ModuleType]) -> None:
    spec = yaml.safe_load((PROJECT / "fedn.yaml").read_text())
    assert spec["helper"] == "pytorch"
    for task in ("train", "validate"):
        module_name, func_name = spec["entry_points"][task]["python"].split(":")
        assert callable(getattr(project[module_name], func_name))


def test_data_splits_are_disjoint_and_cover_the_pool(project: dict[str, ModuleType]) -> None:
    data = project["data"]
    x_test, y_test = data.load_test_set()
    assert x_test.dtype == np.float32 and 0.0 <= x_test.min() and x_test.max() <= 1.0
    assert len(y_test) == 360 and set(np.unique(y_test)) == set(range(10))
    rows = set()
    total = 0
    for i in range(NUM_PARTITIONS):
        x_tr, y_tr, x_val, y_val = data.load_partition(i, NUM_PARTITIONS)
        assert len(x_tr) == len(y_tr) and len(x_val) == len(y_val)
        assert 0.15 < len(x_val) / (len(x_tr) + len(x_val)) < 0.25
        train_rows = {r.tobytes() for r in x_tr}
        assert not train_rows & {r.tobytes() for r in x_val}
        rows |= train_rows | {r.tobytes() for r in x_val}
        total += len(x_tr) + len(x_val)
    assert total == 1797 - 360
    # load_digits has a few duplicate images, so compare against the test set loosely.
    assert len(rows & {r.tobytes() for r in x_test}) < 10
    with pytest.raises(ValueError):
        data.load_partition(NUM_PARTITIONS, NUM_PARTITIONS)


def test_bundled_data_is_load_digits_and_the_test_split_is_stratified(project: dict[str, ModuleType]) -> None:
    """The project reads scikit-learn's CSV itself (importing scikit-learn costs each client
    ~2.5 s of CPU); it must be exactly what load_digits returns, and the held-out test set
    must keep every class's share (20% to within one sample)."""
    from sklearn.datasets import load_digits

    data = project["data"]
    pixels, labels = data._bundled_digits()
    reference = load_digits()
    np.testing.assert_array_equal(pixels, reference.data)
    np.testing.assert_array_equal(labels, reference.target)
    _, y_test = data.load_test_set()
    per_class, in_test = np.bincount(labels, minlength=10), np.bincount(y_test, minlength=10)
    assert np.all(np.abs(in_test - per_class / 5) <= 1), (in_test, per_class)
    with pytest.raises(ValueError, match="1/k"):
        data._stratified_test_mask(labels, 0.3, 1)


def test_seed_model_is_deterministic_and_near_chance(
    project: dict[str, ModuleType], seed_model: str, tmp_path: Path
) -> None:
    helper = get_helper("pytorch")
    again = tmp_path / "seed2.model"
    project["seed"].make_seed(str(again))
    assert _same_state(helper.load(seed_model), helper.load(str(again)))
    metrics = project["entrypoints"].evaluate_model_file(seed_model)
    assert metrics["num_examples"] == 360
    assert metrics["accuracy"] < 0.25  # 10 classes: chance is 0.1
    assert metrics["loss"] > 2.0  # ~ln(10)


def test_train_returns_partition_size_and_lowers_client_loss(
    project: dict[str, ModuleType], seed_model: str, tmp_path: Path
) -> None:
    ep = project["entrypoints"]
    ctx = _ctx(1)
    out = str(tmp_path / "out.model")
    metadata = ep.train(seed_model, out, ctx)
    x_train = project["data"].load_partition(1, NUM_PARTITIONS)[0]
    assert metadata["num_examples"] == len(x_train)
    assert math.isfinite(metadata["train_loss"])
    before, after = ep.validate(seed_model, ctx), ep.validate(out, ctx)
    assert after["loss"] < before["loss"] - 1.0
    assert after["accuracy"] > before["accuracy"] + 0.5
    assert set(after) >= {"accuracy", "loss", "num_examples", "test_accuracy", "test_loss"}
    assert after["num_examples"] == len(project["data"].load_partition(1, NUM_PARTITIONS)[2])


def test_train_is_deterministic_per_round_and_client(
    project: dict[str, ModuleType], seed_model: str, tmp_path: Path
) -> None:
    ep, helper = project["entrypoints"], get_helper("pytorch")

    def run(name: str, ctx: TaskContext) -> "OrderedDict[str, torch.Tensor]":
        ep.train(seed_model, str(tmp_path / name), ctx)
        return helper.load(str(tmp_path / name))

    first = run("a", _ctx(0, epochs=1))
    assert _same_state(first, run("b", _ctx(0, epochs=1)))
    assert not _same_state(first, run("c", _ctx(0, round_id="r2", epochs=1)))


def test_train_honours_config(project: dict[str, ModuleType], seed_model: str, tmp_path: Path) -> None:
    metadata = project["entrypoints"].train(
        seed_model, str(tmp_path / "m"), _ctx(2, epochs=1, learning_rate=0.05, batch_size=16)
    )
    assert (metadata["epochs"], metadata["learning_rate"], metadata["batch_size"]) == (1, 0.05, 16)


def test_fedprox_mu_holds_the_trained_model_near_the_round_model(
    project: dict[str, ModuleType], seed_model: str, tmp_path: Path
) -> None:
    """mu from the strategy settings reaches train; a large one keeps the client's weights
    closer to the model it received than plain training does."""
    helper = get_helper("pytorch")
    start = helper.load(seed_model)
    distance = {}
    for mu in (0.0, 5.0):
        ctx = TaskContext(client_name="client-0", partition_index=0, num_partitions=NUM_PARTITIONS,
                          round_id="r1", config={"epochs": 1}, settings={"mu": mu} if mu else {})
        metadata = project["entrypoints"].train(seed_model, str(tmp_path / f"mu{mu}"), ctx)
        assert metadata["mu"] == mu
        trained = helper.load(str(tmp_path / f"mu{mu}"))
        distance[mu] = sum(float((trained[k] - start[k]).square().sum()) for k in start) ** 0.5
    assert 0 < distance[5.0] < 0.5 * distance[0.0], distance


def test_heterogeneity_config_restricts_training_and_adds_task_accuracies(
    project: dict[str, ModuleType], seed_model: str, tmp_path: Path
) -> None:
    """With the lab's "heterogeneity" in the task config the client trains on its view only:
    in round 3 (task 1: digits 5-9), half its examples, noisy; so the trained model scores
    on task 1's digits and never predicts task 0's, and validate reports both tasks."""
    from fedtier.datatools.heterogeneity import DataRules, client_view

    ep = project["entrypoints"]
    heterogeneity = {"noise": [0.05, 0.1], "labelled": [0.5, 0.5], "seed": 3,
                     "tasks": [{"classes": [0, 1, 2, 3, 4], "rounds": 2}, {"classes": [5, 6, 7, 8, 9], "rounds": 2}]}
    ctx = TaskContext(client_name="client-1", partition_index=1, num_partitions=NUM_PARTITIONS, round_id="r3",
                      round_number=3, config={"heterogeneity": heterogeneity})
    x_train, y_train = project["data"].load_partition(1, NUM_PARTITIONS)[:2]
    _, y_view = client_view(DataRules.from_config(heterogeneity), x_train, y_train, client_index=1, round_number=3)
    assert set(y_view) == {5, 6, 7, 8, 9} and len(y_view) == round(0.5 * np.isin(y_train, [5, 6, 7, 8, 9]).sum())
    metadata = ep.train(seed_model, str(tmp_path / "task1"), ctx)
    assert metadata["num_examples"] == len(y_view)
    metrics = ep.validate(str(tmp_path / "task1"), ctx)
    assert metrics["task_1_test_accuracy"] > 0.6 and metrics["task_0_test_accuracy"] < 0.05, metrics
    assert metrics["test_accuracy"] == pytest.approx(
        (metrics["task_0_test_accuracy"] + metrics["task_1_test_accuracy"]) / 2, abs=0.02)  # stratified test set
    assert not [key for key in ep.validate(seed_model, _ctx(1)) if key.startswith("task_")]


def test_fedavg_reaches_90_percent_in_three_rounds(
    project: dict[str, ModuleType], seed_model: str, tmp_path: Path
) -> None:
    """Guards the default hyperparameters: the sandbox and network tests rely on them."""
    ep, helper = project["entrypoints"], get_helper("pytorch")
    global_model = seed_model
    for r in range(1, 4):
        states, counts = [], []
        for i in range(NUM_PARTITIONS):
            out = str(tmp_path / f"r{r}-c{i}")
            counts.append(ep.train(global_model, out, _ctx(i, round_id=str(r)))["num_examples"])
            states.append(helper.load(out))
        avg = OrderedDict(
            (k, sum(s[k] * n for s, n in zip(states, counts)) / sum(counts)) for k in states[0]
        )
        global_model = str(tmp_path / f"global-{r}")
        helper.save(avg, global_model)
    assert ep.evaluate_model_file(global_model)["accuracy"] >= 0.9


def test_command_wrappers(project: dict[str, ModuleType], seed_model: str, tmp_path: Path) -> None:
    """train.py/validate.py as the client runs them: env from TaskContext.to_env(), any cwd."""
    ctx = _ctx(0, round_id="cmd", epochs=2)
    env = {**os.environ, **ctx.to_env(), "OMP_NUM_THREADS": "1"}
    out_model, out_json = tmp_path / "trained.model", tmp_path / "metrics.json"
    # Both start from the seed model, so run them side by side (each pays torch's import).
    procs = [
        subprocess.Popen([sys.executable, str(PROJECT / script), seed_model, str(out)],
                         env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for script, out in (("train.py", out_model), ("validate.py", out_json))
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output.decode(errors="replace")

    ep, helper = project["entrypoints"], get_helper("pytorch")
    metadata = json.loads((tmp_path / "trained.model-metadata").read_text())
    assert metadata["num_examples"] == len(project["data"].load_partition(0, NUM_PARTITIONS)[0])
    assert metadata["epochs"] == 2  # the task config arrived through the environment
    state = helper.load(str(out_model))
    project["model"].build_model().load_state_dict(state)  # loadable into the architecture
    # Same context in-process gives bit-identical weights: the task seed is not process-salted.
    ep.train(seed_model, str(tmp_path / "inproc.model"), ctx)
    assert _same_state(state, helper.load(str(tmp_path / "inproc.model")))

    metrics = json.loads(out_json.read_text())
    assert metrics == pytest.approx(ep.validate(seed_model, ctx))
    assert set(metrics) >= {"accuracy", "loss", "num_examples", "test_accuracy", "test_loss"}
