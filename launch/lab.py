"""``fedtier lab SCENARIO.yaml``: many virtual clients, unequal and skewed, training for real.

Before a federation goes live its owners want to see how their model and settings fare
with the clients they will really have. The lab runs a scenario (launch/scenario.py) on
this machine over the real protocol: a reducer and combiners (``LocalNetwork``), and the
virtual clients in ``fedtier swarm`` processes (each client its own identity, connection
and partition; the clients' training tasks run in a pool of worker processes, so idle
clients cost only their connection). Each client gets its group's conditions (speed,
bandwidth, latency, availability: client/conditions.py, enforced by the client itself)
and the scenario's data rules travel in the session's task settings (the project applies
them: datatools/heterogeneity.py). The reducer scores each global model once on the
project's test set (its evaluation: reducer/evaluation.py), not every client.

While it runs the lab prints a line per round; at the end it writes ``summary.json`` and
PNG plots (launch/lab_report.py) into its output folder, never over an earlier run's.
Swarms on other machines can join the same reducer (docs/lab.md says how): they are the
same ``fedtier swarm`` processes the lab starts here.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import psutil
import requests

from fedtier.client.project import Project
from fedtier.datatools.heterogeneity import DataRules, average_forgetting, forgetting, task_accuracies, task_of_round
from fedtier.launch.network import LaunchError, LocalNetwork, NotOurReducer, PortInUse
from fedtier.launch.sandbox import make_seed, say
from fedtier.launch.scenario import Scenario, ScenarioError

log = logging.getLogger(__name__)

SWARM_PREFIX = "lab"           # client k of swarm j is lab<j>-<i>
MEMORY_INTERVAL_S = 0.5


class LabError(LaunchError):
    """The lab could not run its scenario; says why."""


def client_names(scenario: Scenario) -> list[str]:
    """Client k's name, k = 0..clients-1: the clients are cut into contiguous blocks, one per
    swarm process, and swarm j names its i-th ``lab<j>-<i>``."""
    return [f"{SWARM_PREFIX}{j}-{i}" for j, (_, count) in enumerate(swarm_blocks(scenario)) for i in range(count)]


def swarm_blocks(scenario: Scenario) -> list[tuple[int, int]]:
    """(first client k, count) of each swarm process, as even as can be."""
    base, extra = divmod(scenario.clients, scenario.processes)
    blocks, start = [], 0
    for j in range(scenario.processes):
        count = base + (1 if j < extra else 0)
        blocks.append((start, count))
        start += count
    return blocks


def client_conditions(scenario: Scenario, epoch: float) -> list[dict[str, Any]]:
    """Client k's conditions: its group's, with its group named, the trace's time origin and
    a seed of its own (its dropout and crash draws differ from its neighbours' and repeat
    from run to run)."""
    groups = scenario.group_of_clients()
    return [{**dict(scenario.group(g).conditions), "group": g, "epoch": epoch,
             "seed": scenario.seed * 1_000_003 + k} for k, g in enumerate(groups)]


class MemorySampler:
    """Peak resident memory of the network's processes, by role, sampled in a thread.

    A swarm's worker pool is its children: counted apart ("workers"), so the bytes of idle
    clients (the swarm itself) and of training (the workers) read separately."""

    ROLES = ("reducer", "combiners", "swarms", "workers", "evaluation")

    def __init__(self, net: LocalNetwork, interval: float = MEMORY_INTERVAL_S) -> None:
        self.net = net
        self.interval = interval
        self.peak = {role: 0 for role in (*self.ROLES, "total")}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-memory", daemon=True)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(5)
        return dict(self.peak)

    def sample(self) -> dict[str, int]:
        now = {role: 0 for role in self.ROLES}
        for name, popen in list(self.net.procs.procs.items()):
            if popen.poll() is not None:
                continue
            role = "reducer" if name == "reducer" else "combiners" if name.startswith("combiner") else "swarms"
            try:
                proc = psutil.Process(popen.pid)
                now[role] += proc.memory_info().rss
                for child in proc.children(recursive=True):
                    kind = "workers" if role == "swarms" else "evaluation" if role == "reducer" else role
                    now[kind] += child.memory_info().rss
            except psutil.Error:  # ended between the listing and the reading
                continue
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = self.sample()
            for role, value in now.items():
                self.peak[role] = max(self.peak[role], value)
            self.peak["total"] = max(self.peak["total"], sum(now.values()))


class Lab:
    def __init__(self, scenario: Scenario, out: Path | None = None, port: int = 0,
                 stop: threading.Event | None = None) -> None:
        self.scenario = scenario
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        stem = Path(scenario.source).stem if scenario.source else "scenario"
        self.out = Path(out or scenario.out or Path("lab-runs") / f"{stem}-{stamp}").resolve()
        if self.out.exists() and any(self.out.iterdir()):
            raise ScenarioError("output.dir", f"{self.out} holds an earlier run: nothing is overwritten; "
                                              f"name another folder (--out)")
        self.stop = stop or threading.Event()
        self.port = port
        self.project = Project.load(scenario.project)
        self.group_of = dict(zip(client_names(scenario), scenario.group_of_clients()))
        self.rows: list[dict[str, Any]] = []
        self.started = time.time()
        self.epoch = self.started       # the clients' trace origin, set when they are started
        self.active_low: int | None = None
        self.shortfall = 0

    # ---- the run
    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        s = self.scenario
        say(f"fedtier lab: {s.clients} clients in {len(s.groups)} groups "
            f"({', '.join(f'{g.name} {g.count}' for g in s.groups)}), {s.per_round} per round, {s.rounds} rounds, "
            f"{s.combiners} combiners, {s.processes} swarm processes, {s.workers} workers; output {self.out}")
        net = LocalNetwork(self.out / "network", port=self.port, startup_timeout=s.startup_timeout, stop=self.stop)
        memory = MemorySampler(net)
        session: dict[str, Any] = {}
        idle: dict[str, Any] = {}
        failure = None
        try:
            try:
                net.choose_port()
                self._start(net)
            except (PortInUse, NotOurReducer) as exc:
                raise LabError(f"{exc}: choose another port with --port, or leave it out") from None
            memory.start()
            self._wait_for_clients(net)
            idle = self._idle_memory(net, memory)
            per_client = idle["bytes_per_client"]
            say(f"clients connected; swarm processes hold {idle['swarm_rss_bytes'] / 2**20:.1f} MiB"
                + (f" ({per_client / 1024:.1f} KiB per idle client)" if per_client is not None else "")
                + f", workers {idle['worker_rss_bytes'] / 2**20:.1f} MiB; starting {s.rounds} rounds")
            session_id = net.start_session(**s.settings)
            session = self._follow(net, session_id)
        except (LaunchError, requests.RequestException) as exc:  # a process gone, the reducer unreachable
            failure = str(exc)
            say(f"lab: {exc}")
        finally:
            peaks = memory.stop()
            net.shutdown()
        summary = self._summary(net, session, peaks, idle, failure)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        plots: list[str] = []
        if s.plots and self.rows:
            from fedtier.launch.lab_report import write_plots

            plots = write_plots(summary, self.out)
        say(f"summary: {self.out / 'summary.json'}" + (f"; plots: {', '.join(plots)}" if plots else ""))
        ok = failure is None and session.get("status") == "succeeded"
        return 0 if ok else 1

    def _start(self, net: LocalNetwork) -> None:
        s = self.scenario
        data = s.data_path or str(s.project)  # the reducer's evaluation needs a path even for bundled data
        net.start_reducer(helper=self.project.helper, env={"FEDTIER_REDUCER_EVAL_PROJECT": str(s.project),
                                                           "FEDTIER_REDUCER_EVAL_DATA": data})
        say(f"dashboard: {net.url}/")
        per_combiner = max(1000, math.ceil(2 * s.clients / s.combiners))
        net.start_combiners(s.combiners, "--max-clients", str(per_combiner))
        net.seed(make_seed(s.project, self.out / "seed.safetensors", net.env, s.seed))
        epoch = time.time()
        conditions = client_conditions(s, epoch)
        swarms = self.out / "swarms"
        swarms.mkdir(exist_ok=True)
        for j, (start, count) in enumerate(swarm_blocks(s)):
            conditions_file = swarms / f"conditions-{j}.json"
            conditions_file.write_text(json.dumps({"clients": conditions[start:start + count]}))
            net.spawn(f"swarm-{j}", "swarm", "--clients", str(count), "--reducer", net.url,
                      "--project", str(s.project), "--name-prefix", f"{SWARM_PREFIX}{j}",
                      "--partition-count", str(s.clients), "--partition-offset", str(start),
                      "--work-dir", str(swarms / f"swarm-{j}"), "--stats", str(swarms / f"stats-{j}.json"),
                      "--conditions", str(conditions_file), "--workers", str(s.workers_of(j)),
                      "--worker-threads", str(s.threads), *(["--data-path", s.data_path] if s.data_path else []))
        self.epoch = epoch

    def _expected_online(self) -> int:
        """Clients whose group's trace does not keep them offline now."""
        now = time.time() - self.epoch
        return sum(g.count for g in self.scenario.groups
                   if not any(a <= now < b for a, b in g.conditions.get("offline", ())))

    def _wait_for_clients(self, net: LocalNetwork) -> None:
        last = -1
        deadline = time.monotonic() + self.scenario.startup_timeout
        while True:
            net.check_alive()
            if self.stop.is_set():
                raise LabError("interrupted")
            try:
                active = net.api("GET", "/api/v1/status?brief=true", timeout=10).get("clients_active", 0)
            except LaunchError:
                active = last
            expected = self._expected_online()
            if active >= expected:
                return
            if active != last:
                say(f"  {active} of {expected} clients connected")
                last = active
            if time.monotonic() > deadline:
                raise LabError(f"only {active} of {expected} clients connected within {self.scenario.startup_timeout:g}s; "
                               f"logs in {net.logs}")
            time.sleep(1.0)

    def _idle_memory(self, net: LocalNetwork, memory: MemorySampler) -> dict[str, Any]:
        """What the connected, idle clients cost: the swarm processes' RSS now, less what each
        held before its first client started (its stats say), over the clients."""
        now = memory.sample()
        base = 0
        deadline = time.monotonic() + 10  # a swarm writes its stats every 2 s
        while time.monotonic() < deadline:
            totals = [f.get("totals", {}) for f in self._swarm_files() if f.get("totals", {}).get("base_rss_bytes")]
            if len(totals) == self.scenario.processes:
                base = sum(t["base_rss_bytes"] for t in totals)
                break
            time.sleep(0.5)
        return {"swarm_rss_bytes": now["swarms"], "worker_rss_bytes": now["workers"],
                "swarm_base_rss_bytes": base or None,
                "bytes_per_client": (now["swarms"] - base) / self.scenario.clients if base else None}

    def _swarm_files(self) -> list[dict[str, Any]]:
        """Each swarm's stats file as it last wrote it (``totals``, per-client ``clients``); one
        being replaced is skipped (the next read sees it whole)."""
        out = []
        for path in sorted((self.out / "swarms").glob("stats-*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                log.debug("swarm stats %s unreadable now: %s", path, exc)
        return out

    # ---- following the session
    def _follow(self, net: LocalNetwork, session_id: str) -> dict[str, Any]:
        seen: set[str] = set()
        while True:
            net.check_alive()
            if self.stop.is_set():
                raise LabError("interrupted")
            self._count_active(net)
            session = net.api("GET", f"/api/v1/sessions/{session_id}")
            for brief in net.api("GET", "/api/v1/rounds", params={"session_id": session_id, "view": "summary"}):
                if brief["status"] == "running" or brief["id"] in seen:
                    continue
                seen.add(brief["id"])
                row = round_row(net.api("GET", f"/api/v1/rounds/{brief['id']}"), self.group_of)
                row["since_start_s"] = round(time.time() - self.started, 1)
                self.rows.append(row)
                say(progress_line(row, self.scenario))
            if session["status"] != "running":
                say(f"session {session['status']}: {session['rounds_succeeded']} of {session['rounds_requested']} "
                    f"rounds succeeded")
                return session
            time.sleep(0.5)

    def _count_active(self, net: LocalNetwork) -> None:
        """The fewest clients the reducer counted active while the session ran, against those
        whose conditions had them online: a client wrongly marked inactive shows as a shortfall."""
        active = net.api("GET", "/api/v1/status?brief=true", timeout=10).get("clients_active", 0)
        expected = self._expected_online()
        self.active_low = active if self.active_low is None else min(self.active_low, active)
        self.shortfall = max(self.shortfall, expected - active)

    # ---- the summary
    def _summary(self, net: LocalNetwork, session: Mapping[str, Any], peaks: Mapping[str, int],
                 idle: Mapping[str, Any], failure: str | None) -> dict[str, Any]:
        s = self.scenario
        stats = {name: figures for f in self._swarm_files() for name, figures in f.get("clients", {}).items()}
        groups = {}
        for g in s.groups:
            rows = [r["groups"].get(g.name, {}) for r in self.rows]
            chosen = sum(r.get("chosen", 0) for r in rows)
            updated = sum(r.get("updated", 0) for r in rows)
            timed = sum(r.get("timed", 0) for r in rows)
            maxima = [r["task_seconds_max"] for r in rows if r.get("task_seconds_max") is not None]
            members = [n for n, grp in self.group_of.items() if grp == g.name]
            groups[g.name] = {
                "clients": g.count, "conditions": dict(g.conditions), "chosen": chosen, "updated": updated,
                "failed": sum(r.get("failed", 0) for r in rows),
                "participation": updated / chosen if chosen else None,
                "task_seconds_mean": sum(r["task_seconds_mean"] * r["timed"] for r in rows if r.get("timed"))
                / timed if timed else None,
                "task_seconds_max": max(maxima, default=None),
                **{key: sum(stats.get(n, {}).get(key, 0) for n in members)
                   for key in ("dropouts", "crashes", "offline_periods", "connects")}}
        good = [r for r in self.rows if r["status"] == "success"]
        summary: dict[str, Any] = {
            "scenario": s.to_record(), "output": str(self.out), "dashboard": net.url + "/",
            "started_at": self.started, "finished_at": time.time(), "error": failure,
            "session": {k: session.get(k) for k in ("id", "status", "rounds_requested", "rounds_succeeded",
                                                    "rounds_failed")},
            "rounds": self.rows, "groups": groups,
            # with no dropout, crash or trace, a shortfall is a client wrongly counted inactive
            "liveness": {"fewest_active": self.active_low, "largest_shortfall": self.shortfall},
            "final": {"round": good[-1]["round"], "test_accuracy": good[-1]["test_accuracy"]} if good else None,
            "memory": {"peak_rss_bytes": dict(peaks), "idle": dict(idle)},
            "processes_peak_rss_bytes": peaks.get("total", 0),
            "logs": str(net.logs)}
        tasks = task_summary(self.rows, s.heterogeneity)
        if tasks:
            summary["tasks"] = tasks
        return summary


# ---------------------------------------------------------------- reading rounds
def round_row(doc: Mapping[str, Any], group_of: Mapping[str, str]) -> dict[str, Any]:
    """One round of the session, read per group from the reducer's round record: the
    clients asked (each combiner's task timeline), those whose update counted, those whose
    task failed, and how long each reported task took on its combiner's clock."""
    combiners = doc.get("combiners") or []
    counted = set(doc.get("participants") or [])
    groups: dict[str, dict[str, Any]] = {}
    for combiner in combiners:
        for task in combiner.get("clients") or []:
            g = groups.setdefault(group_of.get(task["client"], "?"), {"chosen": 0, "updated": 0, "failed": 0,
                                                                      "timed": 0, "task_seconds_max": None})
            g["chosen"] += 1
            if task["client"] in counted:
                g["updated"] += 1
            if task.get("state") == "failed":
                g["failed"] += 1
            if task.get("state") == "reported" and task.get("ended") is not None:
                ended = float(task["ended"])
                g["task_seconds_mean"] = g.get("task_seconds_mean", 0.0) + ended  # a sum until the end
                g["timed"] += 1
                g["task_seconds_max"] = max(g["task_seconds_max"] or 0.0, ended)
    for g in groups.values():  # "timed": the reported tasks with a time, which the mean is over
        total = g.pop("task_seconds_mean", None)
        g["task_seconds_mean"] = total / g["timed"] if g["timed"] else None
    scores = {**(doc.get("metrics") or {}), **(doc.get("reducer_metrics") or {})}
    tasks = task_accuracies(scores)
    return {"round": doc["round"], "status": doc["status"], "error": doc.get("error"),
            "seconds": round(float((doc.get("timings") or {}).get("total", 0.0)), 3),
            # the reducer's phases of the round (training on the combiners, aggregation, evaluation...)
            "phases": {k: round(float(v), 3) for k, v in (doc.get("timings") or {}).items()},
            "test_accuracy": scores.get("test_accuracy"), "test_loss": scores.get("test_loss"),
            "chosen": sum(g["chosen"] for g in groups.values()), "updates": len(counted),
            "failed": sum(g["failed"] for g in groups.values()),
            "groups": groups, "task_accuracy": {str(k): tasks[k] for k in sorted(tasks)}}


def progress_line(row: Mapping[str, Any], scenario: Scenario) -> str:
    if row["status"] != "success":
        return f"round {row['round']:>4}/{scenario.rounds}  {row['status'].upper()}  {row.get('error') or ''}"
    accuracy = row["test_accuracy"]
    shown = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "-"
    text = f"round {row['round']:>4}/{scenario.rounds}  test accuracy {shown}"
    text += f"  time {row['seconds']:.2f}s  updates {row['updates']}/{row['chosen']}"
    parts = []
    for g in scenario.groups:
        figures = row["groups"].get(g.name)
        if figures:
            parts.append(f"{g.name} {figures['updated']}/{figures['chosen']}"
                         + (f" {figures['task_seconds_mean']:.1f}s" if figures["task_seconds_mean"] is not None else ""))
    if parts:
        text += "  [" + ", ".join(parts) + "]"
    if row["task_accuracy"]:
        text += "  tasks " + " ".join(f"{k}:{v:.2f}" for k, v in row["task_accuracy"].items())
    return text


def task_summary(rows: list[Mapping[str, Any]], heterogeneity: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Accuracy per task per round and each task's forgetting (datatools/heterogeneity.py);
    the average is over the tasks finished by the last round."""
    scored = [r for r in rows if r["task_accuracy"]]
    if not scored:
        return None
    history = [{int(k): v for k, v in r["task_accuracy"].items()} for r in scored]
    current = task_of_round(DataRules.from_config(heterogeneity), scored[-1]["round"]) if heterogeneity else None
    return {"accuracy_per_round": [{"round": r["round"], **r["task_accuracy"]} for r in scored],
            "forgetting": {str(k): v for k, v in forgetting(history).items()},
            "task_at_the_end": current, "average_forgetting": average_forgetting(history, current)}


def run_lab(path: str, overrides: Mapping[str, Any], out: str | None, port: int, check_only: bool,
            stop: threading.Event) -> int:
    """``fedtier lab``: check the scenario (and stop there with ``--check``), or run it."""
    try:
        scenario = Scenario.load(path, overrides)
    except ScenarioError as exc:
        say(f"lab: {path}: {exc}")
        return 2
    if check_only:
        say(json.dumps(scenario.to_record(), indent=2))
        return 0
    try:
        lab = Lab(scenario, Path(out) if out else None, port=port, stop=stop)
    except ScenarioError as exc:
        say(f"lab: {exc}")
        return 2
    return lab.run()
