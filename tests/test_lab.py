"""``fedtier lab``: the scenario file checked with the field named, and a small lab run end to end.

The run is the README's own command (examples/lab/quick.yaml): real processes (a reducer,
two combiners, a swarm with a worker pool), three groups of clients (fast, slow, flaky),
a skewed partition and feature skew, three rounds; its summary, progress lines and plots
are checked for what the scenario asked.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import ROOT
from fedtier.launch.lab import client_conditions, round_row, swarm_blocks, task_summary
from fedtier.launch.scenario import Scenario, ScenarioError, parse_yaml

QUICK = ROOT / "examples" / "lab" / "quick.yaml"


def scenario(**changes: object) -> dict:
    base = {"project": str(ROOT / "test_projects" / "digits"), "clients": 10, "rounds": 2}
    base.update(changes)
    return base


@pytest.mark.parametrize("changes, field", [
    ({"clients": 0}, "clients"),
    ({"clients": "many"}, "clients"),
    ({"colour": "blue"}, "colour"),
    ({"project": "/nonexistent/project"}, "project"),
    ({"sampling": {"fraction": 1.5}}, "sampling.fraction"),
    ({"sampling": {"count": 11}}, "sampling.count"),
    ({"sampling": {"count": 3, "fraction": 0.5}}, "sampling"),
    ({"pool": {"workers": -1}}, "pool.workers"),
    ({"pool": {"threads": 1000}}, "pool.threads"),
    ({"groups": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]}, "groups"),
    ({"groups": [{"name": "a", "count": 4}, {"name": "b", "count": 4}]}, "groups"),
    ({"groups": [{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}]}, "groups[1].name"),
    ({"groups": [{"name": "Bad Name", "share": 1}]}, "groups[0].name"),
    ({"groups": [{"name": "a", "share": 1, "speed": 0}]}, "groups[0].speed"),
    ({"groups": [{"name": "a", "share": 1, "dropout": 2}]}, "groups[0].dropout"),
    ({"groups": [{"name": "a", "share": 1, "warp": 9}]}, "groups[0].warp"),
    ({"groups": [{"name": "a", "share": 1, "seed": 9}]}, "groups[0].seed"),
    ({"data": {"partition": "dirichlet:alpha=-1"}}, "data.partition"),
    ({"data": {"partition": "nosuchscheme"}}, "data.partition"),
    ({"data": {"heterogeneity": {"tasks": [{"classes": [0, 1], "rounds": 0}]}}}, "data.heterogeneity.tasks[0]"),
    ({"data": {"heterogeneity": {"colour": 1}}}, "data.heterogeneity.colour"),
    ({"session": {"rounds": 3}}, "session.rounds"),
    ({"session": {"clients_requested": 3}}, "session.clients_requested"),
    ({"session": {"round_timeout": -1}}, "session.round_timeout"),
    ({"session": {"clients_required": 20}}, "session.clients_required"),
    ({"session": {"aggregation": {"combiner": "fedadam"}}}, "session.aggregation.combiner.name"),
    ({"session": {"task": {"partition": "iid"}}}, "session.task.partition"),
])
def test_a_bad_scenario_is_refused_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_dict(scenario(**changes))
    assert caught.value.field.startswith(field), (caught.value.field, str(caught.value))


def test_yaml_aliases_and_oversized_files_are_refused(tmp_path: Path) -> None:
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    with pytest.raises(ScenarioError, match="aliases"):
        parse_yaml(bomb)
    big = tmp_path / "big.yaml"
    big.write_text("project: x\n# " + "y" * 300_000 + "\n")
    with pytest.raises(ScenarioError, match="bound"):
        Scenario.load(big)


def test_defaults_and_what_the_lab_derives() -> None:
    s = Scenario.from_dict(scenario(clients=1001, sampling={"fraction": 0.1},
                                    groups=[{"name": "fast", "share": 0.7},
                                            {"name": "slow", "share": 0.3, "speed": 0.5}],
                                    pool={"workers": 3, "clients_per_process": 400}))
    assert s.per_round == 100 and s.settings["clients_requested"] == 100
    assert s.settings["clients_required"] == 50 and s.settings["validate"] is False
    assert s.settings["task"]["partition"] == {"scheme": "iid"} and s.settings["rounds"] == 2
    assert [g.count for g in s.groups] == [701, 300]
    assert s.processes == 3 and [s.workers_of(j) for j in range(3)] == [1, 1, 1]
    assert swarm_blocks(s) == [(0, 334), (334, 334), (668, 333)]
    conditions = client_conditions(s, epoch=123.0)
    assert len(conditions) == 1001 and {c["group"] for c in conditions} == {"fast", "slow"}
    assert sum(c["group"] == "slow" for c in conditions) == 300
    assert all(c["speed"] == 0.5 for c in conditions if c["group"] == "slow")
    assert len({c["seed"] for c in conditions}) == 1001 and {c["epoch"] for c in conditions} == {123.0}
    assert conditions[:50] != sorted(conditions[:50], key=lambda c: c["group"])  # groups are mixed, not blocks


@settings(max_examples=60, deadline=None)
@given(clients=st.integers(1, 5000), weights=st.lists(st.integers(1, 100), min_size=1, max_size=8))
def test_group_counts_follow_the_shares(clients: int, weights: list[int]) -> None:
    total = sum(weights)
    shares = [w / total for w in weights]
    s = Scenario.from_dict(scenario(clients=clients, groups=[{"name": f"g{i}", "share": x}
                                                             for i, x in enumerate(shares)]))
    counts = [g.count for g in s.groups]
    assert sum(counts) == clients
    assert all(abs(c - x * clients) < 1 for c, x in zip(counts, shares))


def test_a_round_is_read_per_group() -> None:
    doc = {"round": 4, "status": "success", "timings": {"total": 3.5}, "participants": ["a", "b"],
           "reducer_metrics": {"test_accuracy": 0.8, "task_0_test_accuracy": 0.9, "task_1_test_accuracy": 0.1},
           "combiners": [{"clients": [{"client": "a", "state": "reported", "ended": 1.0},
                                      {"client": "c", "state": "failed", "ended": 0.5}]},
                         {"clients": [{"client": "b", "state": "reported", "ended": 4.0}]}]}
    row = round_row(doc, {"a": "fast", "b": "slow", "c": "slow"})
    assert row["test_accuracy"] == 0.8 and row["updates"] == 2 and row["chosen"] == 3 and row["failed"] == 1
    assert row["phases"] == {"total": 3.5}
    assert row["groups"]["fast"]["chosen"] == 1 and row["groups"]["fast"]["task_seconds_mean"] == 1.0
    assert row["groups"]["slow"] == {"chosen": 2, "updated": 1, "failed": 1, "timed": 1,
                                     "task_seconds_mean": 4.0, "task_seconds_max": 4.0}
    assert row["task_accuracy"] == {"0": 0.9, "1": 0.1}
    rules = {"tasks": [{"classes": [0, 1], "rounds": 1}, {"classes": [2, 3], "rounds": 1}]}
    tasks = task_summary([{"round": 1, "task_accuracy": {"0": 0.9, "1": 0.0}},
                          {"round": 2, "task_accuracy": {"0": 0.5, "1": 0.8}}], rules)
    assert tasks is not None and tasks["forgetting"]["0"] == pytest.approx(0.4)
    assert tasks["task_at_the_end"] == 1 and tasks["average_forgetting"] == pytest.approx(0.4)


def test_check_prints_the_plan_and_a_bad_file_exits_2(tmp_path: Path) -> None:
    fedtier = [sys.executable, "-m", "fedtier.launch.cli", "--env-file", "/dev/null", "lab"]
    done = subprocess.run([*fedtier, str(QUICK), "--check", "--clients", "20"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["clients"] == 20 and plan["clients_per_round"] == 15
    assert [g["count"] for g in plan["groups"]] == [10, 5, 5]
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICK.read_text().replace("speed: 0.3", "speed: -2"))
    done = subprocess.run([*fedtier, str(bad), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "groups[1].speed" in done.stdout, done.stdout + done.stderr


def readme_lab_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"^(\.venv/bin/fedtier lab examples/lab/quick\.yaml)\s*$", text, flags=re.M)
    assert found, "the README shows how to run examples/lab/quick.yaml"
    return found[0]


def test_the_readme_lab_runs_a_small_scenario_over_real_processes() -> None:
    """The README's line, as written, from the repository root: three groups over real
    processes; the slow group's tasks take longer, the flaky group drops out (absent from
    rounds that still meet their quorum), every round is reported as it ends, and the summary
    and plots are written into a new folder under lab-runs/ (removed afterwards)."""
    venv = ROOT / ".venv"
    if not (venv / "bin" / "fedtier").is_file():
        pytest.skip("no .venv with fedtier at the repository root (make venv)")
    done = subprocess.run(["bash", "-c", readme_lab_command()], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "FEDTIER_LOG_LEVEL": "WARNING"})
    written = re.search(r"^summary: (\S+)/summary\.json", done.stdout, flags=re.M)
    out = Path(written.group(1)) if written else None
    try:
        _check_quick_run(done, out)
    finally:
        if out is not None and out.parent == ROOT / "lab-runs":
            shutil.rmtree(out, ignore_errors=True)


def _check_quick_run(done: subprocess.CompletedProcess, out: Path | None) -> None:
    assert done.returncode == 0 and out is not None, done.stdout[-4000:] + done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("round ")]
    assert len(lines) == 3 and all("test accuracy" in line and "fast" in line for line in lines), done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["session"]["status"] == "succeeded" and len(summary["rounds"]) == 3
    assert summary["final"]["test_accuracy"] > 0.3  # skewed, noisy, partly labelled: yet above chance (0.1)
    groups = summary["groups"]
    assert {g: groups[g]["clients"] for g in groups} == {"fast": 6, "slow": 3, "flaky": 3}
    assert groups["flaky"]["dropouts"] >= 1 and groups["flaky"]["participation"] < 1
    assert groups["fast"]["participation"] == 1 and groups["fast"]["dropouts"] == 0
    assert groups["slow"]["task_seconds_mean"] > 1.5 * groups["fast"]["task_seconds_mean"], groups
    for row in summary["rounds"]:
        assert row["updates"] >= 4 and row["phases"]["reducer_evaluation"] > 0
    memory = summary["memory"]
    assert 0 < memory["idle"]["bytes_per_client"] < 4 * 2**20 and memory["peak_rss_bytes"]["workers"] > 0
    for name in ("accuracy.png", "participation.png", "round_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_lab_seeds_the_combiners_draw_of_clients() -> None:
    seeded = Scenario.from_dict(scenario(clients=40, sampling={"count": 10}, seed=4))
    assert seeded.settings["sampling_seed"] == 5  # the scenario's seed; 0 would mean unseeded
    own = Scenario.from_dict(scenario(clients=40, sampling={"count": 10}, session={"sampling_seed": 9}))
    assert own.settings["sampling_seed"] == 9  # the session's own wins
    assert "sampling_seed" not in Scenario.from_dict(scenario(clients=40)).settings  # all asked: no draw
