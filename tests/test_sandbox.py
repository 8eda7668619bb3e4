"""End to end: `fedtier sandbox` brings up reducer, 2 combiners and 5 clients and trains digits."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from fedtier.storage.local import LocalModelStore
from fedtier.storage.sqlite import SQLiteStateStore


def test_sandbox_trains_digits_and_keeps_a_correct_trail(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "fedtier.launch.cli", "--env-file", "/nonexistent", "sandbox",
         "--project", str(ROOT / "test_projects" / "digits"), "--combiners", "2", "--clients", "5",
         "--rounds", "3", "--exit-when-done", "--summary", str(summary_path), "--work-dir", str(work)],
        capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("accuracy") >= 3 and "dashboard: http://127.0.0.1:" in done.stdout

    summary = json.loads(summary_path.read_text())
    assert summary["combiners"] == 2 and summary["clients"] == 5
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["status"] == "success" and r["participants"] == 5 for r in rounds)
    assert summary["final_accuracy"] >= 0.9, rounds
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"] - 0.02, rounds

    # the trail: seed + 3 models, each the child of the one before, bytes matching their hashes
    state = SQLiteStateStore(work / "fedtier.sqlite")
    store = LocalModelStore(work / "model_store")
    trail = state.find("models", order_by="created_at")
    assert len(trail) == 4
    assert trail[0]["kind"] == "seed" and trail[0]["parent_id"] is None
    for parent, child in zip(trail, trail[1:]):
        assert child["parent_id"] == parent["id"]
        assert child["round"] == parent["round"] + 1
    assert [m["id"] for m in trail[1:]] == [r["model_id"] for r in rounds]
    for model in trail:
        data = b"".join(store.iter_chunks(model["id"]))
        assert hashlib.sha256(data).hexdigest() == model["sha256"]
    sessions = state.find("sessions")
    assert len(sessions) == 1 and sessions[0]["status"] == "succeeded" and sessions[0]["rounds_succeeded"] == 3
    # the reducer keeps the last committed model (the next round's base) and nothing older
    (kept,) = (work / "reducer" / "latest").iterdir()
    assert kept.name == trail[-1]["id"] and hashlib.sha256(kept.read_bytes()).hexdigest() == trail[-1]["sha256"]
    state.close()


def test_relative_data_path_is_resolved_before_children_start(tmp_path: Path, monkeypatch) -> None:
    """Clients run in the sandbox's work dir, so a relative --data-path must be made absolute
    first (it was passed through as typed: every task then failed on a directory that did
    not exist from there). A path that does not exist is refused before any process starts."""
    from fedtier.launch.sandbox import Sandbox, SandboxOptions

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    box = Sandbox(SandboxOptions(project=ROOT / "test_projects" / "digits", data_path="data",
                                 work_dir=tmp_path / "work"))
    assert box.options.data_path == str(tmp_path / "data")
    with pytest.raises(ValueError, match="--data-path missing does not exist"):
        Sandbox(SandboxOptions(project=ROOT / "test_projects" / "digits", data_path="missing",
                               work_dir=tmp_path / "work"))


def _argv_recording_project(root: Path) -> Path:
    """A project whose seed.py writes the arguments it was given as its "model"."""
    root.mkdir()
    (root / "fedn.yaml").write_text("helper: numpy\nentry_points:\n  train:\n    python: m:train\n"
                                    "  validate:\n    python: m:validate\n")
    (root / "seed.py").write_text("import json, sys\nopen(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))\n")
    return root


@pytest.mark.parametrize("value, passed", [(None, []), (42, ["--seed", "42"])])
def test_sandbox_hands_seed_py_the_seed_value(tmp_path: Path, value: int | None, passed: list[str]) -> None:
    from fedtier.launch.sandbox import Sandbox, SandboxOptions

    project = _argv_recording_project(tmp_path / "p")
    (tmp_path / "w").mkdir()  # run() makes it; this calls the seed step alone
    sandbox = Sandbox(SandboxOptions(project=project, seed_value=value, work_dir=tmp_path / "w"))
    assert json.loads(sandbox._make_seed().read_text()) == passed


@pytest.mark.parametrize("options, message", [
    ({"seed_value": 1, "seed": Path("model.bin")}, "not both"),
    ({"seed_value": -1}, "--seed-value must be from 0 to"),
    ({"seed_value": 2**32}, "--seed-value must be from 0 to"),
])
def test_sandbox_refuses_a_bad_seed_value_before_starting(tmp_path: Path, options: dict, message: str) -> None:
    from fedtier.launch.sandbox import Sandbox, SandboxOptions

    with pytest.raises(ValueError, match=message):
        Sandbox(SandboxOptions(project=_argv_recording_project(tmp_path / "p"), work_dir=tmp_path / "w", **options))
