"""``fedtier sandbox --partition`` and the optional ``labels`` entry of fedn.yaml.

The point of the feature: the table the sandbox prints (and saves) is what the
clients really hold. The last test runs the real network and checks exactly that,
from the number of examples each client reports.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from fedtier.client.project import Project, ProjectError
from fedtier.launch.sandbox import Sandbox, SandboxError, SandboxOptions

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "test_projects" / "digits"
DIGITS_POOL = 1437  # 80% of scikit-learn's 1797 digits (test_projects/digits/data.py)
GENERIC_MODULES = ("model", "data", "entrypoints", "seed", "train", "validate")


@pytest.fixture
def isolated_modules() -> Iterator[None]:
    """The sandbox imports the project's ``data`` module in this process; test projects share
    such generic names, so keep whatever other tests imported out of the way and restore it."""
    saved = {name: sys.modules.pop(name) for name in GENERIC_MODULES if name in sys.modules}
    path = list(sys.path)
    try:
        yield
    finally:
        for name in GENERIC_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
        sys.path[:] = path


def _sandbox(tmp_path: Path, **kwargs: object) -> Sandbox:
    return Sandbox(SandboxOptions(project=kwargs.pop("project", DIGITS), work_dir=tmp_path, **kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- options
def test_partition_spec_goes_into_the_task_config(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, partition="dirichlet:alpha=0.5,seed=3", task='{"epochs": 2}')
    assert sandbox.task == {"epochs": 2, "partition": {"scheme": "dirichlet", "alpha": 0.5, "seed": 3}}


@pytest.mark.parametrize("kwargs,match", [
    ({"partition": "kclass:k=2", "task": '{"partition": {"scheme": "iid"}}'}, "given twice"),
    ({"partition": "dirichlet:alpha=zero"}, "not a number"),
    ({"partition": "shards:n=2"}, "unknown partition scheme 'shards'"),
    ({"task": '{"partition": {"scheme": "kclass", "kk": 2}}'}, "invalid parameters for scheme 'kclass'"),
    ({"task": '[1, 2]'}, "must be a JSON object"),
])
def test_bad_partition_settings_fail_before_anything_starts(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _sandbox(tmp_path, **kwargs)
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------------------- Project.labels
def _project(tmp_path: Path, labels_line: str, module: str = "") -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "fedn.yaml").write_text(
        "entry_points:\n  train:\n    python: m:train\n  validate:\n    python: m:validate\n" + labels_line)
    if module:
        (tmp_path / f"{module}.py").write_text(
            "import numpy as np\n"
            "def good(data_path, config):\n    return np.arange(10) % 3\n"
            "def flat2d(data_path, config):\n    return np.zeros((4, 2))\n"
            "def broken(data_path, config):\n    raise FileNotFoundError('no MNIST here')\n")
    return tmp_path


def test_project_labels_entry_is_optional_and_checked(tmp_path: Path) -> None:
    module = f"labels_{tmp_path.name.replace('-', '_')}"  # unique: imported into this process
    assert Project.load(DIGITS).labels == "data:train_labels"
    no_labels = Project.load(_project(tmp_path / "a", ""))
    assert no_labels.labels is None
    with pytest.raises(ProjectError, match="declares no 'labels"):
        no_labels.train_labels(None, {})
    with pytest.raises(ProjectError, match="labels must be 'module:function'"):
        Project.load(_project(tmp_path / "b", "labels: train_labels\n"))
    for func, expected in [("good", None), ("flat2d", "non-empty 1-D array, got shape \\(4, 2\\)"),
                           ("broken", "failed: FileNotFoundError: no MNIST here")]:
        project = Project.load(_project(tmp_path / "c", f"labels: {module}:{func}\n", module))
        if expected is None:
            np.testing.assert_array_equal(project.train_labels(None, {}), np.arange(10) % 3)
        else:
            with pytest.raises(ProjectError, match=expected):
                project.train_labels(None, {})


# ---------------------------------------------------------------------------- the table
def test_sandbox_prints_and_saves_each_clients_label_histogram(
        tmp_path: Path, isolated_modules: None, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox = _sandbox(tmp_path, clients=5, partition="kclass:k=2")
    sandbox._show_partitions()
    out = capsys.readouterr().out
    assert "partition: kclass (k=2), 1437 samples over 5 clients" in out
    assert out.count("\n") >= 8  # header, 5 clients, total, mean TV
    record = json.loads((tmp_path / "partitions.json").read_text())
    assert record["partition"] == {"scheme": "kclass", "k": 2}
    assert record["num_samples"] == DIGITS_POOL
    assert [c["client"] for c in record["clients"]] == [f"client-{i}" for i in range(5)]
    assert [c["classes"] for c in record["clients"]] == [2] * 5
    assert sum(c["size"] for c in record["clients"]) == DIGITS_POOL
    for client in record["clients"]:
        assert sum(1 for n in client["histogram"].values() if n > 0) == 2
        assert f"{client['size']}" in out


def test_sandbox_table_shows_randk_clients_with_varying_label_counts(
        tmp_path: Path, isolated_modules: None, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox = _sandbox(tmp_path, clients=8, partition="randk:min=1,max=4,seed=2")
    sandbox._show_partitions()
    assert "partition: randk (min=1, max=4, seed=2), 1437 samples over 8 clients" in capsys.readouterr().out
    record = json.loads((tmp_path / "partitions.json").read_text())
    counts = [c["classes"] for c in record["clients"]]
    assert all(1 <= n <= 4 for n in counts) and len(set(counts)) > 1, counts
    assert sum(c["size"] for c in record["clients"]) == DIGITS_POOL


def test_sandbox_without_partition_shows_the_iid_default(tmp_path: Path, isolated_modules: None) -> None:
    sandbox = _sandbox(tmp_path, clients=3)
    sandbox._show_partitions()
    assert sandbox.task["partition"] == {"scheme": "iid"}  # made explicit for the clients
    record = json.loads((tmp_path / "partitions.json").read_text())
    assert [c["size"] for c in record["clients"]] == [479, 479, 479]
    assert record["mean_tv_distance"] < 0.1


def test_impossible_partition_is_a_sandbox_error(tmp_path: Path, isolated_modules: None) -> None:
    sandbox = _sandbox(tmp_path, clients=3, partition="kclass:k=1")  # 3 clients cannot hold 10 classes
    with pytest.raises(SandboxError, match="cannot partition the data for 3 clients: .*k=1"):
        sandbox._show_partitions()


# ---------------------------------------------------------------------------- the real network
def test_clients_train_on_the_announced_partition(tmp_path: Path, isolated_modules: None) -> None:
    """Real processes: each client's reported num_examples is its announced share minus validation.

    One of the three is Byzantine (``--byzantine``): the sandbox names it, and the global
    model is the weighted mean of the two honest updates and the attacker's sign-flipped
    one (``base - (trained - base)``), each update recomputed here by the project's own
    deterministic train."""
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "fedtier.launch.cli", "--env-file", "/nonexistent", "sandbox", "--project", str(DIGITS),
         "--combiners", "1", "--clients", "3", "--rounds", "1", "--exit-when-done",
         "--summary", str(summary_path), "--work-dir", str(tmp_path / "work"), "--startup-timeout", "300",
         "--partition", "quantity:beta=0.5,min_size=20,seed=1", "--task", '{"epochs": 1}',
         "--byzantine", "sign_flip:fraction=0.3"],
        capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("byzantine: 1 of 3 clients attack with sign_flip (scale=1), placement spread: client-2 on combiner-0"
            in done.stdout)
    assert "partition: quantity (beta=0.5, min_size=20, seed=1)" in done.stdout
    record = json.loads((tmp_path / "work" / "partitions.json").read_text())
    sizes = {c["client"]: c["size"] for c in record["clients"]}
    assert sum(sizes.values()) == DIGITS_POOL and len(set(sizes.values())) > 1  # skewed sizes
    summary = json.loads(summary_path.read_text())
    assert summary["partition"] == {"scheme": "quantity", "beta": 0.5, "min_size": 20, "seed": 1}
    (round1,) = summary["rounds"]
    assert round1["status"] == "success"
    # digits holds out round(20%) of each share for validation and trains on the rest.
    expected = {name: size - min(max(1, round(size * 0.2)), size - 1) for name, size in sizes.items()}
    assert round1["num_examples"] == expected
    assert summary["byzantine"]["clients"] == [{"client": "client-2", "combiner": "combiner-0"}]
    _assert_global_model_holds_the_attacked_update(tmp_path / "work", summary)


def _assert_global_model_holds_the_attacked_update(work: Path, summary: dict) -> None:
    from fedtier.client.context import TaskContext
    from fedtier.helpers.format import read_model
    from fedtier.storage.collections import ROUNDS
    from fedtier.storage.local import LocalModelStore
    from fedtier.storage.sqlite import SQLiteStateStore

    sys.path.insert(0, str(DIGITS))
    import entrypoints  # the digits project's, isolated by the fixture

    state = SQLiteStateStore(work / "fedtier.sqlite")
    (record,) = state.find(ROUNDS)
    state.close()
    weights = {u["client"]: u["weight_used"] for c in record["combiners"] for u in c["updates"]}
    base = read_model(work / "seed.safetensors")
    updates = {}
    for i in range(3):  # each client's honest training, as its process ran it
        name = f"client-{i}"
        ctx = TaskContext(client_name=name, partition_index=i, num_partitions=3, round_number=1,
                          round_id=record["id"], config={"epochs": 1, "partition": summary["partition"]},
                          work_dir=work)
        entrypoints.train(str(work / "seed.safetensors"), str(work / f"honest-{i}"), ctx)
        updates[name] = read_model(work / f"honest-{i}")
    honest_client_2 = updates["client-2"]
    updates["client-2"] = {k: 2 * base[k].astype(np.float64) - v for k, v in honest_client_2.items()}
    total = sum(weights.values())
    model_id = summary["rounds"][0]["model_id"]
    (work / "global").write_bytes(b"".join(LocalModelStore(work / "model_store").iter_chunks(model_id)))
    global_model = read_model(work / "global")
    for key, value in global_model.items():
        expected = sum(weights[c] * updates[c][key].astype(np.float64) for c in updates) / total
        honest = expected + weights["client-2"] * (honest_client_2[key] - updates["client-2"][key]) / total
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-5, err_msg=key)
        assert np.abs(value - honest).max() > 1e-3, key  # and it is not what an honest client-2 gives
