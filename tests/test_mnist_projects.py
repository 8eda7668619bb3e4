"""The MNIST test projects (mnist-pytorch, mnist-keras): their data handling, their entry
points, and the real sandbox reaching >= 0.9 test accuracy in 2 rounds.

Needs the reference MNIST files in ../shared/data/mnist (never copied into the repo);
every test here skips, saying so, when they are absent.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import pytest

from fedtier.client.context import TaskContext
from fedtier.helpers.format import read_model

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist"
PROJECTS = ("mnist-pytorch", "mnist-keras")
GENERIC_MODULES = ("model", "data", "entrypoints", "seed", "train", "validate")
SUBSET = {"max_train": 6000, "max_test": 2000}
CLIENTS = 3  # in the real-network test

pytestmark = pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(),
                                reason=f"MNIST reference data not found in {MNIST}")


@pytest.fixture(scope="module", params=PROJECTS)
def project(request: pytest.FixtureRequest) -> Iterator[dict[str, ModuleType]]:
    """Import one project's modules as the client does (its folder on sys.path).

    Both projects (and digits) use the same module names, so whatever was imported
    before is set aside and restored afterwards.
    """
    path = ROOT / "test_projects" / request.param
    saved = {name: sys.modules.pop(name) for name in GENERIC_MODULES if name in sys.modules}
    sys.path.insert(0, str(path))
    try:
        modules = {name: importlib.import_module(name) for name in ("data", "entrypoints", "seed")}
        modules["name"] = request.param  # type: ignore[assignment]
        yield modules
    finally:
        sys.path.remove(str(path))
        for name in GENERIC_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def _ctx(index: int, config: dict, round_id: str = "r1", clients: int = 5) -> TaskContext:
    return TaskContext(client_name=f"client-{index}", data_path=str(MNIST), partition_index=index,
                       num_partitions=clients, round_id=round_id, config=config)


# ---------------------------------------------------------------------------- data
def test_subset_partitions_cover_the_pool_exactly(project: dict[str, ModuleType]) -> None:
    data = project["data"]
    pool_labels = data.train_labels(str(MNIST), SUBSET)
    assert pool_labels.shape == (6000,)
    np.testing.assert_array_equal(pool_labels, data.train_labels(str(MNIST), SUBSET))  # deterministic
    counts = np.zeros(10, dtype=int)
    sizes = []
    for i in range(5):
        x_tr, y_tr, x_val, y_val = data.load_partition(str(MNIST), i, 5, SUBSET)
        assert x_tr.dtype == np.float32 and x_tr.shape[1:] == (28, 28)
        assert abs(float(x_tr.mean())) < 0.2 and 0.8 < float(x_tr.std()) < 1.2  # standardised
        assert len(y_val) == 240 and len(y_tr) == 960  # 1200 each, 20% held out
        counts += np.bincount(y_tr, minlength=10) + np.bincount(y_val, minlength=10)
        sizes.append(len(y_tr) + len(y_val))
    # The clients' data together are exactly the pool the sandbox partitions.
    np.testing.assert_array_equal(counts, np.bincount(pool_labels, minlength=10))
    assert sum(sizes) == 6000


def test_partition_config_is_honoured(project: dict[str, ModuleType]) -> None:
    data = project["data"]
    config = {**SUBSET, "partition": {"scheme": "kclass", "k": 2, "seed": 4}}
    held = [set(np.unique(np.concatenate([s[1], s[3]])).tolist())
            for s in (data.load_partition(str(MNIST), i, 5, config) for i in range(5))]
    assert all(len(classes) == 2 for classes in held)
    assert set().union(*held) == set(range(10))


def test_test_set_and_bad_settings(project: dict[str, ModuleType], tmp_path: Path) -> None:
    data = project["data"]
    x, y = data.load_test_set(str(MNIST), {"max_test": 2000})
    assert x.shape == (2000, 28, 28) and y.shape == (2000,)
    assert data.load_test_set(str(MNIST), {})[1].shape == (10000,)
    with pytest.raises(ValueError, match="max_train must be a positive integer"):
        data.train_labels(str(MNIST), {"max_train": 0})
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte.gz"):
        data.train_labels(str(tmp_path), {})
    with pytest.raises(ValueError, match="partition 2 of 3 has 0 sample|min_size"):
        data.load_partition(str(MNIST), 2, 3, {"max_train": 3, "partition": {"scheme": "iid"}})


# ---------------------------------------------------------------------------- entry points
def test_train_is_deterministic_and_validate_reports_both_splits(
        project: dict[str, ModuleType], tmp_path: Path) -> None:
    seed_path, ep = str(tmp_path / "seed.model"), project["entrypoints"]
    project["seed"].make_seed(seed_path)
    config = {**SUBSET, "epochs": 1}
    outs = {}
    for tag, round_id in (("a", "r1"), ("b", "r1"), ("c", "r2")):
        outs[tag] = str(tmp_path / f"{tag}.model")
        meta = ep.train(seed_path, outs[tag], _ctx(1, config, round_id))
        assert meta["num_examples"] == 960 and meta["epochs"] == 1 and np.isfinite(meta["train_loss"])
    digest = {tag: hashlib.sha256(Path(p).read_bytes()).hexdigest() for tag, p in outs.items()}
    assert digest["a"] == digest["b"], "re-running a task must reproduce it exactly"
    assert digest["a"] != digest["c"], "another round must shuffle differently"

    before = ep.validate(seed_path, _ctx(1, SUBSET))
    after = ep.validate(outs["a"], _ctx(1, SUBSET))
    assert set(after) >= {"accuracy", "loss", "num_examples", "test_accuracy", "test_loss"}
    assert after["num_examples"] == 240
    assert before["test_accuracy"] < 0.3 < 0.5 < after["test_accuracy"]  # one epoch on 960 images learns
    assert after["test_loss"] < before["test_loss"]
    assert ep.evaluate_model_file(outs["a"], str(MNIST), 2000)["accuracy"] == pytest.approx(after["test_accuracy"])


def test_fedprox_mu_reaches_train_and_holds_the_model_near_the_round_model(
        project: dict[str, ModuleType], tmp_path: Path) -> None:
    seed_path, ep = str(tmp_path / "seed.model"), project["entrypoints"]
    project["seed"].make_seed(seed_path)
    start = read_model(seed_path)
    distance = {}
    for mu in (0.0, 5.0):
        ctx = TaskContext(client_name="client-0", data_path=str(MNIST), partition_index=0, num_partitions=10,
                          round_id="r1", config={"max_train": 3000, "epochs": 1}, settings={"mu": mu})
        assert ep.train(seed_path, str(tmp_path / f"mu{mu}"), ctx)["mu"] == mu
        trained = read_model(tmp_path / f"mu{mu}")
        distance[mu] = sum(float(np.square(trained[k] - start[k]).sum()) for k in start) ** 0.5
    assert 0 < distance[5.0] < 0.7 * distance[0.0], distance


def test_heterogeneity_config_restricts_training_and_adds_task_accuracies(
        project: dict[str, ModuleType], tmp_path: Path) -> None:
    """mnist-pytorch opts in to the lab's data heterogeneity (datatools/heterogeneity.py):
    round 2 of a [digits 0-4, digits 5-9] schedule trains on the client's 5-9 only."""
    if project["name"] != "mnist-pytorch":
        pytest.skip("the heterogeneity opt-in is in mnist-pytorch (and digits)")
    from fedtier.datatools.heterogeneity import DataRules, client_view

    seed_path, ep = str(tmp_path / "seed.model"), project["entrypoints"]
    project["seed"].make_seed(seed_path)
    heterogeneity = {"labelled": [0.5, 0.5], "scale": [0.9, 1.1],
                     "tasks": [{"classes": [0, 1, 2, 3, 4], "rounds": 1}, {"classes": [5, 6, 7, 8, 9], "rounds": 1}]}
    config = {**SUBSET, "epochs": 1, "heterogeneity": heterogeneity}
    ctx = TaskContext(client_name="client-1", data_path=str(MNIST), partition_index=1, num_partitions=5,
                      round_id="r2", round_number=2, config=config)
    x_train, y_train = project["data"].load_partition(str(MNIST), 1, 5, config)[:2]
    _, y_view = client_view(DataRules.from_config(heterogeneity), x_train, y_train, client_index=1, round_number=2)
    assert set(y_view) == {5, 6, 7, 8, 9}
    assert ep.train(seed_path, str(tmp_path / "t1"), ctx)["num_examples"] == len(y_view)
    metrics = ep.validate(str(tmp_path / "t1"), ctx)
    assert metrics["task_1_test_accuracy"] > 0.3 and metrics["task_0_test_accuracy"] < 0.05, metrics  # 1 epoch, ~240 images
    assert not [key for key in ep.validate(seed_path, _ctx(1, SUBSET)) if key.startswith("task_")]


# ---------------------------------------------------------------------------- the real network
@pytest.mark.parametrize("name", ["mnist-pytorch"])
def test_sandbox_reaches_90_percent_in_two_rounds(name: str, tmp_path: Path) -> None:
    """3 clients, 2 combiners (2 clients on one, 1 on the other), 6000 training images in
    total, 2 rounds, real processes.

    mnist-pytorch only, in the suite: the same run of mnist-keras (22 s) moved to
    bench/mnist_full.py (both projects over the network at full size) to keep ``make test``
    under its 12 minutes; the keras project's training and validation stay checked here, in
    process, by the tests above.

    Measured test accuracy after rounds 1 and 2 (two runs each): 0.947-0.956 then 0.961-0.971
    (pytorch), 0.921-0.949 then 0.964-0.965 (keras); 23-24 s and 33-36 s on 2 idle cores. With 5 clients (1200 images each, as the issue's
    example had it) 0.94-0.944 then 0.964-0.965 (pytorch) and 0.928-0.931 then 0.955-0.961
    (keras), in 31 s and 51 s: the two extra framework imports alone took 15 s of the suite's
    10-minute budget, so the test runs 3.
    """
    summary_path = tmp_path / "summary.json"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fedtier.launch.cli", "--env-file", "/nonexistent", "sandbox",
         "--project", str(ROOT / "test_projects" / name), "--combiners", "2", "--clients", str(CLIENTS), "--rounds", "2",
         "--exit-when-done", "--summary", str(summary_path), "--work-dir", str(tmp_path / "work"),
         "--data-path", str(MNIST), "--task", json.dumps(SUBSET), "--startup-timeout", "300",
         # the committed seed (test_seeds.py checks seed.py reproduces it): saves a framework import
         "--seed", str(ROOT / "seeds" / f"{name}.safetensors")],
        capture_output=True, text=True, timeout=400)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    rounds = summary["rounds"]
    assert [r["status"] for r in rounds] == ["success", "success"]
    assert all(r["participants"] == CLIENTS for r in rounds)
    assert sum(rounds[-1]["num_examples"].values()) == 4800  # 3 x 1600 (80% of 2000): trained on the subset
    print(f"{name}: test accuracy per round {[r['test_accuracy'] for r in rounds]}, {elapsed:.0f}s")
    assert summary["final_test_accuracy"] >= 0.9
