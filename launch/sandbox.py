"""``fedtier sandbox``: a whole network on one machine, as separate processes on loopback.

It starts the reducer, N combiners and M clients exactly as a deployment would
(each its own ``fedtier`` process, talking over real sockets, with the embedded
stores), seeds the project's seed model, runs the rounds and prints one line per
round. Every process logs to ``<work-dir>/logs``; whatever happens, every process it
started is stopped when it exits. It starts nothing on a ``--port`` that is taken, and
uses only the reducer that reports the instance id it gave it: combiners registered with
some other network's reducer, under its combiners' names, broke that network.

``--partition SPEC`` (``iid``, ``dirichlet:alpha=0.5``, ``kclass:k=2``...; see
``fedtier.datatools.partition.parse_spec``) goes into the session's task config as
``"partition"``, so every client splits the data the same way. If the project names
a ``labels`` function in fedn.yaml, the sandbox partitions those labels itself before
starting anything, prints each client's label histogram and saves it to
``<work-dir>/partitions.json``: what the clients will hold is visible before a run.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtier.client.attack import AttackPlan
from fedtier.client.project import Project, ProjectError
from fedtier.datatools.partition import format_summary, parse_spec, partition_from_config, resolve_config, summarize
from fedtier.reducer.control import check_task_data
from fedtier.launch.network import LaunchError, LocalNetwork, NotOurReducer, PortInUse
from fedtier.round_config import RoundConfig, RoundConfigError
from fedtier.seed_args import MAX_SEED


class SandboxError(LaunchError):
    """The network could not be brought up or a round could not be run; says why."""


@dataclass(frozen=True)
class SandboxOptions:
    project: Path
    combiners: int = 2
    clients: int = 5
    rounds: int = 3
    exit_when_done: bool = False
    summary: Path | None = None
    work_dir: Path | None = None
    port: int = 0
    seed: Path | None = None
    data_path: str | None = None
    round_timeout: float = 300.0
    task: str = "{}"
    startup_timeout: float = 120.0
    partition: str | None = None  # a partition spec, e.g. "dirichlet:alpha=0.5"
    seed_value: int | None = None  # handed to the project's seed.py as --seed N
    byzantine: str | None = None  # lab attackers, e.g. "sign_flip:fraction=0.3,placement=one" (client/attack.py)
    settings: str = "{}"  # JSON round settings merged into /start, e.g. an aggregation strategy


def say(message: str) -> None:
    """The sandbox's progress lines go to stdout: they are its output, not a service log."""
    print(message, flush=True)


def _json_object(flag: str, text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value


def make_seed(project: Path, out: Path, env: dict[str, str], seed_value: int | None = None) -> Path:
    """The project's first model, made by its ``seed.py`` (``--seed N`` when a value is given)."""
    script = project / "seed.py"
    if not script.is_file():
        raise SandboxError(f"{project} has no seed.py; pass --seed FILE")
    seed = [] if seed_value is None else ["--seed", str(seed_value)]
    done = subprocess.run([sys.executable, str(script), str(out), *seed], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not out.is_file():
        raise SandboxError(f"seed.py failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
    return out


class Sandbox:
    def __init__(self, options: SandboxOptions, stop: threading.Event | None = None) -> None:
        if options.combiners < 1 or options.clients < 1 or options.rounds < 1:
            raise ValueError("--combiners, --clients and --rounds must each be at least 1")
        self.task = _json_object("--task", options.task)
        if options.seed_value is not None:
            if options.seed is not None:
                raise ValueError("--seed-value makes the seed model with seed.py; --seed FILE brings one: not both")
            if not 0 <= options.seed_value <= MAX_SEED:
                raise ValueError(f"--seed-value must be from 0 to {MAX_SEED}, got {options.seed_value}")
        if options.partition:
            if "partition" in self.task:
                raise ValueError("the partition is given twice: use --partition or \"partition\" in --task, not both")
            self.task["partition"] = parse_spec(options.partition)
        elif "partition" in self.task:
            resolve_config(self.task["partition"])  # a mistake should stop us before any process starts
        check_task_data(self.task)  # as /start would: partition and the lab's data rules
        if options.data_path:
            # Children run in the work dir: a relative path would point somewhere else there.
            data = Path(options.data_path).expanduser().resolve()
            if not data.exists():
                raise ValueError(f"--data-path {options.data_path} does not exist (resolved to {data})")
            options = dataclasses.replace(options, data_path=str(data))
        self.plan = AttackPlan.parse(options.byzantine, options.clients, options.combiners) \
            if options.byzantine else None
        self.settings = _json_object("--settings", options.settings)
        try:  # what /start would refuse is refused before any process starts
            RoundConfig.from_dict({k: v for k, v in self.settings.items() if k != "rounds"})
        except RoundConfigError as exc:
            raise ValueError(f"--settings: {exc}") from None
        self.options = options
        self.project = Project.load(options.project)
        self.stop = stop or threading.Event()
        self.work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-sandbox-")).resolve()
        # the processes, their logs (work_dir/logs), the embedded stores (work_dir): fedtier.launch.network
        self.net = LocalNetwork(self.work_dir, port=options.port, startup_timeout=options.startup_timeout,
                                stop=self.stop)
        self.logs = self.net.logs

    @property
    def url(self) -> str:
        return self.net.url

    # ---- processes and the reducer's API: the launcher's (_spawn: a process of another kind, reducer first)
    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        return self.net.spawn(name, *args)

    def _check_alive(self) -> None:
        self.net.check_alive()

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.net.api(method, path, **kwargs)

    # ---- the run
    def run(self) -> int:
        try:
            rounds = self._bring_up_and_train()
            ok = all(r["status"] == "success" for r in rounds)
            if self.options.exit_when_done:
                return 0 if ok else 1
            say(f"rounds done; still serving at {self.url}/ (Ctrl-C to stop)")
            while not self.stop.wait(1.0):
                self._check_alive()
            return 0 if ok else 1
        except LaunchError as exc:
            say(f"sandbox: {exc}")
            return 1
        finally:
            self.net.shutdown()

    def _bring_up_and_train(self) -> list[dict[str, Any]]:
        o = self.options
        try:
            self.net.choose_port()
        except PortInUse as exc:
            raise SandboxError(f"{exc}: choose another with --port, or leave --port out for a free one") from None
        say(f"fedtier sandbox: {o.combiners} combiners, {o.clients} clients, project {self.project.root.name}; "
            f"work dir {self.work_dir}")
        self._show_partitions()
        try:  # the launcher uses only the reducer that reports the instance id it gave it
            self.net.start_reducer(helper=self.project.helper)
        except NotOurReducer as exc:
            raise SandboxError(f"{exc}: choose another port with --port, or leave it out") from None
        say(f"dashboard: {self.url}/")
        self.net.start_combiners(o.combiners, "--heartbeat-interval", "1", "--heartbeat-timeout", "6")

        seed = o.seed or self._make_seed()
        self.net.seed(seed)
        attacks = {"FEDTIER_ALLOW_ATTACKS": "true" if self.plan else "false"}  # --byzantine: the sandbox's clients only
        if self.plan is None:
            self.net.start_clients(o.clients, self.project.root, data_path=o.data_path, env=attacks)
        else:  # with attackers, each client is pinned to its combiner, so the placement is the plan's
            for i in range(o.clients):
                name = f"client-{i}"
                port = self.net.combiners[f"combiner-{self.plan.combiner_of(i)}"]
                self.net.spawn(name, "client", "--combiner", f"127.0.0.1:{port}", *self.plan.client_args(i),
                               "--project", str(self.project.root), "--name", name, "--partition", f"{i}/{o.clients}",
                               *(["--data-path", o.data_path] if o.data_path else []), env=attacks)
            self.net.wait_for_clients(o.clients)
        say(f"{o.clients} clients connected; starting {o.rounds} rounds")
        if self.plan:
            say(self.plan.describe())
        session_id = self.net.start_session(**{**self.settings, "rounds": o.rounds, "clients_required": o.clients,
                                               "round_timeout": o.round_timeout, "task": self.task})
        return self._follow(session_id)

    def _show_partitions(self) -> None:
        """Partition the project's labels as the clients will, print the table, save it.

        The clients run the same ``fedtier.datatools.partition`` code on the same labels with the
        same task config, so this is exactly what each will hold. Skipped (with a note
        when a partition was asked for) if the project declares no ``labels`` function.
        """
        if self.project.labels is None:
            if "partition" in self.task:
                say(f"partition {self.task['partition']}: {self.project.root.name} declares no 'labels' in "
                    f"fedn.yaml, so the per-client label table cannot be shown")
            return
        config = self.task.setdefault("partition", {"scheme": "iid"})
        try:
            labels = self.project.train_labels(self.options.data_path, self.task)
            parts = partition_from_config(labels, self.options.clients, config)
        except (ProjectError, ValueError, OSError) as exc:
            raise SandboxError(f"cannot partition the data for {self.options.clients} clients: {exc}") from None
        summary = summarize(labels, parts)
        spec = ", ".join(f"{k}={v}" for k, v in config.items() if k != "scheme")
        say(f"partition: {config['scheme']}{' (' + spec + ')' if spec else ''}, {len(labels)} samples "
            f"over {self.options.clients} clients (row i is client-i)")
        for line in format_summary(summary).splitlines():
            say("  " + line)
        record = {"partition": config, "num_samples": int(len(labels)), "num_clients": self.options.clients,
                  "mean_tv_distance": sum(s["tv_distance"] for s in summary) / len(summary),
                  "clients": [{"client": f"client-{s['partition']}", **s} for s in summary]}
        (self.work_dir / "partitions.json").write_text(json.dumps(record, indent=2))

    def _make_seed(self) -> Path:
        return make_seed(self.project.root, self.work_dir / "seed.safetensors", self.net.env, self.options.seed_value)

    def _follow(self, session_id: str) -> list[dict[str, Any]]:
        """Print each round as it finishes; return the rounds when the session ends."""
        printed: set[str] = set()
        summary_rounds: list[dict[str, Any]] = []
        while True:
            self._check_alive()
            if self.stop.is_set():
                raise SandboxError("interrupted")
            session = self._api("GET", f"/api/v1/sessions/{session_id}")
            for r in self._api("GET", "/api/v1/rounds", params={"session_id": session_id}):
                if r["status"] == "running" or r["id"] in printed:
                    continue
                printed.add(r["id"])
                metrics = r.get("metrics") or {}
                entry = {"round": r["round"], "status": r["status"], "accuracy": metrics.get("accuracy"),
                         "loss": metrics.get("loss"), "test_accuracy": metrics.get("test_accuracy"),
                         "round_time_s": round(r["timings"].get("total", 0.0), 3),
                         "participants": len(r.get("participants") or []), "model_id": r.get("model_out"),
                         # what each client trained on: checks that clients hold the announced partition
                         "num_examples": {u["client"]: u["num_examples"] for c in r.get("combiners") or []
                                          for u in c.get("updates") or []}}
                summary_rounds.append(entry)
                say(self._line(entry, r.get("error")))
            if session["status"] != "running":
                break
            time.sleep(0.5)
        self._write_summary(summary_rounds)
        say(f"session {session['status']}: {session['rounds_succeeded']} of {session['rounds_requested']} "
            f"rounds succeeded")
        return summary_rounds

    @staticmethod
    def _line(entry: dict[str, Any], error: str | None) -> str:
        def fmt(value: Any) -> str:
            return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

        if entry["status"] != "success":
            return f"round {entry['round']:>3}  FAILED  {error}"
        text = (f"round {entry['round']:>3}  accuracy {fmt(entry['accuracy'])}  loss {fmt(entry['loss'])}  "
                f"time {entry['round_time_s']:.2f}s  clients {entry['participants']}")
        if entry["test_accuracy"] is not None:
            text += f"  test accuracy {fmt(entry['test_accuracy'])}"
        return text

    def _write_summary(self, rounds: list[dict[str, Any]]) -> None:
        if not self.options.summary:
            return
        good = [r for r in rounds if r["status"] == "success"]
        summary = {"combiners": self.options.combiners, "clients": self.options.clients,
                   "partition": self.task.get("partition"), "rounds": rounds, "settings": self.settings,
                   "byzantine": self.plan.to_record() if self.plan else None,
                   "final_accuracy": good[-1]["accuracy"] if good else None,
                   "final_test_accuracy": good[-1]["test_accuracy"] if good else None,
                   "dashboard": self.url + "/", "work_dir": str(self.work_dir)}
        self.options.summary.write_text(json.dumps(summary, indent=2))
