"""Round overhead against Flower: the same model, the same no-op training, the same clients.

    .venv/bin/python bench/flower_compare.py [--params 1M,25M] [--clients 10] [--rounds 10]
                                             [--combiners 1,2] [--repeats 1] [--evaluate]
                                             [--skip-flower] [--json out.json]

Both frameworks run on loopback with one process per client, and a model of
``--params`` float32 values in 8 tensors (bench/projects/noop/seed.py's weights: the
same seeded values on both sides). Training is a no-op: the client returns the arrays
it got, so the aggregate is the input and a round's time is the framework's own cost.

Flower runs its deployment runtime as its documentation shows: one ``flower-superlink
--insecure``, one ``flower-supernode --insecure --superlink ...`` process per client, and
a Flower app (ServerApp + ClientApp, written by this script into the scratch directory)
started with ``flwr run APP CONNECTION --stream``. The ServerApp runs Flower's own
``FedAvg`` strategy (``flwr.serverapp.strategy``) with ``fraction_train=1.0`` and every
client required; the ClientApp's ``train`` replies with the ``ArrayRecord`` it received.
Flower is installed by this script into its own virtualenv (``--flower-venv``, default
``bench/.flower-venv``, gitignored), never into the project's ``.venv``: flwr needs a
newer protobuf than fedtier pins. Round time is measured in the ServerApp: a subclass
of FedAvg stamps ``time.time()`` when ``configure_train`` starts and when
``aggregate_evaluate`` ends (the end of Flower's round), so process start-up, the
app's installation and the strategy set-up are outside it.

fedtier runs the whole network (``fedtier reducer``, ``--combiners`` ``fedtier
combiner`` processes, ``--clients`` ``fedtier client`` processes with
bench/projects/noop), seeded through ``POST /seed`` and driven by ``POST /start``;
round time is the reducer's own ``timings.total`` of each round (``/api/v1/rounds``),
also from the first step of the round to the commit of its model.

Evaluation: by default both are off (Flower ``fraction_evaluate=0.0``, fedtier
``"validate": false``), so a round is one training round trip. ``--evaluate`` turns
both on (Flower evaluates on every client each round; fedtier validates each new
global model on every client).

The first ``--warmup`` rounds of every run are not timed. Each framework's figure is
the median over all timed rounds of all ``--repeats`` runs (runs of the two are
interleaved: Flower, fedtier with each combiner count, then again); the figure to
quote is fedtier / Flower, the ratio of the medians.

``--skip-flower`` runs fedtier's side only (no Flower virtualenv needed); the
ratio printed is then 2 combiners against 1 (if both were run).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import BENCH, MiB, NOOP_PROJECT, make_seed, sha256_file  # noqa: E402

from fedtier.launch.network import LocalNetwork  # noqa: E402

# Flower's newest release on PyPI at the time of writing is 1.42.0, but it requires
# certifi>=2026.10.19, which the package registry this was measured with does not
# have yet; 1.41.0 is the newest that installs (and the release the issue quotes).
FLWR_VERSION = "1.41.0"
DEFAULT_FLOWER_VENV = BENCH / ".flower-venv"
TENSORS = 8  # as bench/projects/noop/seed.py


# ================================================================ helpers
def descendants(procs: common.Processes) -> list[psutil.Process]:
    """Every live descendant of the processes started (Flower detaches some of its own)."""
    found: list[psutil.Process] = []
    for proc in procs.procs.values():
        try:
            found += psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
    return found


def stop_everything(procs: common.Processes) -> None:
    """Stop the processes started and every descendant they left (found before stopping)."""
    children = descendants(procs)
    procs.stop_all()
    _terminate(children)


def kill_tree(procs: common.Processes) -> None:
    """Kill a process tree that keeps spawning (Flower's SuperExecs start a ClientApp process
    per message, in their own sessions): freeze it first, so nothing new appears, then kill."""
    frozen: dict[int, psutil.Process] = {}
    roots = []
    for proc in procs.procs.values():
        try:
            roots.append(psutil.Process(proc.pid))
        except psutil.Error:
            pass
    for _ in range(5):  # a child forked between listing and stopping is caught on the next pass
        found = [p for r in roots for p in [r, *_children(r)] if p.pid not in frozen]
        if not found:
            break
        for p in found:
            try:
                p.suspend()
                frozen[p.pid] = p
            except psutil.Error:
                pass
    for p in frozen.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(frozen.values()), timeout=10)
    for proc in procs.procs.values():  # reap our direct children
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _terminate(children: Sequence[psutil.Process]) -> None:
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


# ================================================================ fedtier: the whole network
class FedtierNetwork:
    """reducer + combiners + clients as separate ``fedtier`` processes on loopback.

    Started the way a deployment starts them (fedtier.launch.network: the CLI, embedded
    stores under one data directory, clients asking the reducer for a combiner), but
    driven from here so a session can be started with any round settings (``validate``
    included).
    """

    def __init__(self, work: Path, combiners: int, clients: int, project: Path = NOOP_PROJECT,
                 heartbeat: Sequence[str] = ()) -> None:
        self.work = Path(work)
        self.combiners = combiners
        self.clients = clients
        self.project = project
        self.heartbeat = list(heartbeat)
        self.net = LocalNetwork(self.work, data_dir=self.work / "data", log_level="WARNING", startup_timeout=180)
        self.procs = self.net.procs

    @property
    def url(self) -> str:
        return self.net.url

    def api(self, method: str, path: str, timeout: float = 60, **kwargs: Any) -> Any:
        return self.net.api(method, path, timeout=timeout, **kwargs)

    def start(self, seed: Path) -> None:
        """Bring the network up and seed it; returns once every client is active."""
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        self.net.start_reducer(helper="numpy")
        self.net.start_combiners(self.combiners, *self.heartbeat)
        self.net.seed(seed, timeout=1800)
        self.net.start_clients(self.clients, self.project)

    def pid(self, name: str) -> int:
        return self.procs.procs[name].pid

    def run_session(self, rounds: int, validate: bool, round_timeout: float = 1800,
                    on_poll: Any = None) -> list[dict[str, Any]]:
        """Run a session of ``rounds`` rounds; the reducer's round documents, in order."""
        session_id = self.net.start_session(rounds=rounds, clients_required=self.clients, validate=validate,
                                            round_timeout=round_timeout, wait_for_clients=120)
        self.net.wait_for_session(session_id, timeout=rounds * (round_timeout + 300),
                                  on_poll=None if on_poll is None else lambda _session: on_poll())
        return self.net.rounds(session_id)

    def latest_model(self) -> dict[str, Any]:
        models = self.api("GET", "/api/v1/models", timeout=30)
        return max(models, key=lambda m: m["created_at"])

    def download(self, model_id: str, dest: Path) -> Path:
        with requests.get(f"{self.url}/api/v1/models/{model_id}/download", stream=True, timeout=600) as reply:
            reply.raise_for_status()
            with open(dest, "wb") as f:
                for block in reply.iter_content(8 * MiB):
                    f.write(block)
        return dest

    def stop(self) -> None:
        stop_everything(self.procs)


def compare_models(seed: Path, other: Path) -> dict[str, Any]:
    """Whether a model holds the seed's values: byte for byte, and value for value (FedAvg's
    ``mean += w * (x - mean)`` turns a -0.0 into +0.0: equal values, different bytes)."""
    import numpy as np

    from fedtier.helpers.format import read_model

    identical = sha256_file(seed) == sha256_file(other)
    a, b = read_model(seed), read_model(other)
    same_keys = list(a) == list(b)
    diff = max((float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0)
               for k in a) if same_keys else float("inf")
    return {"bytes_identical": identical, "max_abs_diff": diff}


def run_fedtier(work: Path, seed: Path, combiners: int, clients: int, rounds: int, warmup: int,
                validate: bool) -> dict[str, Any]:
    net = FedtierNetwork(work, combiners, clients)
    started = time.monotonic()
    try:
        net.start(seed)
        startup = time.monotonic() - started
        docs = net.run_session(warmup + rounds, validate)
        final = net.download(net.latest_model()["id"], work / "final-model")
        check = compare_models(seed, final)
        final.unlink()
    finally:
        net.stop()
    timed = docs[warmup:]
    ok = [d for d in timed if d["status"] == "success"]
    starts = [d["started_at"] for d in docs]
    phases = sorted({k for d in ok for k in d["timings"]})
    participants = [len(d.get("participants") or []) for d in ok]
    return {
        "combiners": combiners, "startup_s": startup,
        "rounds": len(docs), "rounds_succeeded": sum(d["status"] == "success" for d in docs),
        "rounds_timed": len(ok), "round_s": [d["timings"]["total"] for d in ok],
        "period_s": [b - a for a, b in zip(starts[warmup:], starts[warmup + 1:])],
        "phases": {p: common.summarize(d["timings"].get(p, 0.0) for d in ok) for p in phases},
        "updates_per_round": participants,
        "model_unchanged": check["max_abs_diff"] == 0.0, "max_abs_diff": check["max_abs_diff"],
        "bytes_identical": check["bytes_identical"],
        "errors": [f"round {d['round']}: {d.get('error')}" for d in docs if d["status"] != "success"],
    }


# ================================================================ Flower
PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedtierbench"
version = "1.0.0"
description = "No-op round overhead benchmark app (written by fedtier's bench/flower_compare.py)"
license = "Apache-2.0"
dependencies = ["flwr=={version}", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedtier-bench"

[tool.flwr.app.components]
serverapp = "fedtierbench.server_app:app"
clientapp = "fedtierbench.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
params = 1000
tensors = 8
clients = 2
evaluate = false
out = ""
"""

CLIENT_APP = '''\
"""No-op ClientApp: train replies with the arrays it received, unchanged."""
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

NUM_EXAMPLES = 100  # as bench/projects/noop

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    content = RecordDict({"arrays": msg.content["arrays"],
                          "metrics": MetricRecord({"num-examples": NUM_EXAMPLES})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": NUM_EXAMPLES})})
    return Message(content=content, reply_to=msg)
'''

SERVER_APP = '''\
"""ServerApp: Flower's FedAvg, every round timed from configure_train to aggregate_evaluate."""
import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def make_weights(params, tensors):
    """bench/projects/noop/seed.py's weights: the same seeded float32 values."""
    rng = np.random.default_rng(0)
    tensors = max(1, min(tensors, params))
    sizes = [params // tensors] * tensors
    sizes[-1] += params - sum(sizes)
    return [rng.standard_normal(n, dtype=np.float32) for n in sizes]


class TimedFedAvg(FedAvg):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rounds = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds[server_round] = {"start": time.time()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        record = self.rounds[server_round]
        record["train_replies"] = sum(1 for r in replies if not r.has_error())
        record["train_errors"] = sum(1 for r in replies if r.has_error())
        out = super().aggregate_train(server_round, replies)
        record["train_done"] = time.time()
        return out

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        out = super().aggregate_evaluate(server_round, replies)
        record = self.rounds[server_round]
        record["evaluate_replies"] = sum(1 for r in replies if not r.has_error())
        record["end"] = time.time()
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    clients, evaluate = int(cfg["clients"]), bool(cfg["evaluate"])
    weights = make_weights(int(cfg["params"]), int(cfg["tensors"]))
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=1.0 if evaluate else 0.0,
                           min_train_nodes=clients, min_evaluate_nodes=clients if evaluate else 0,
                           min_available_nodes=clients)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(weights),
                            num_rounds=int(cfg["num-server-rounds"]))
    final = result.arrays.to_numpy_ndarrays()
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(final, weights))
    with open(cfg["out"], "w") as f:
        json.dump({"rounds": strategy.rounds, "max_abs_diff": diff,
                   "final_dtypes": sorted({str(a.dtype) for a in final})}, f)
'''


def relaunches(procs: common.Processes, clients: int) -> int:
    """ClientApp processes that lost their task token (their start took longer than Flower's
    30 s activation window, e.g. on an overloaded machine); the SuperExec starts another."""
    return sum(procs.log(f"supernode-{i}").count("Failed to push task output") for i in range(clients))


def ensure_flower_venv(venv: Path, version: str = FLWR_VERSION) -> Path:
    """A virtualenv with flwr==version (created and installed if missing); returns its bin/."""
    bin_dir = venv / "bin"
    python = bin_dir / "python"
    if python.is_file():
        done = subprocess.run([str(python), "-c", "import flwr, numpy; print(flwr.__version__)"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == version:
            return bin_dir
    print(f"installing flwr=={version} into {venv} (its own virtualenv)...", flush=True)
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"flwr=={version}", "numpy"], check=True)
    return bin_dir


def flower_versions(bin_dir: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, platform; print({'python': platform.python_version(), "
            "**{p: m.version(p) for p in ('flwr', 'grpcio', 'protobuf', 'numpy')}})")
    done = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True)
    try:
        return eval(done.stdout.strip(), {})  # noqa: S307 - our own one-line dict literal
    except Exception:  # noqa: BLE001
        return {"error": done.stderr.strip()[-300:]}


def write_flower_app(folder: Path, superlink_port: int) -> tuple[Path, Path]:
    """The Flower app and a Flower configuration (FLWR_HOME) naming the SuperLink ``bench``."""
    app = folder / "app"
    (app / "fedtierbench").mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(PYPROJECT.replace("{version}", FLWR_VERSION))
    (app / "fedtierbench" / "__init__.py").write_text("")
    (app / "fedtierbench" / "client_app.py").write_text(CLIENT_APP)
    (app / "fedtierbench" / "server_app.py").write_text(SERVER_APP)
    home = folder / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(textwrap.dedent(f"""\
        [superlink]
        default = "bench"

        [superlink.bench]
        address = "127.0.0.1:{superlink_port}"
        insecure = true
        """))
    return app, home


def run_flower(work: Path, bin_dir: Path, params: int, clients: int, rounds: int, warmup: int,
               evaluate: bool, round_limit: float = 120) -> dict[str, Any]:
    timeout = 300 + (warmup + rounds) * round_limit
    work.mkdir(parents=True, exist_ok=True)
    port = common.free_port()
    app, home = write_flower_app(work, port)
    out = work / "rounds.json"
    env = {"FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1", "VIRTUAL_ENV": str(bin_dir.parent)}
    procs = common.Processes(work / "logs")
    started = time.monotonic()
    try:
        # the SuperLink serves its Fleet, Control and Runtime APIs on one HTTP port in 1.41;
        # runtime `uv sync` of the app's dependencies is off: they are installed already
        link = procs.start("superlink", [str(bin_dir / "flower-superlink"), "--insecure", "--port", str(port),
                                         "--disable-runtime-dependency-installation"], env=env)
        common.wait_for_port(port, timeout=120, proc=link)
        for i in range(clients):
            procs.start(f"supernode-{i}", [str(bin_dir / "flower-supernode"), "--insecure",
                                           "--superlink", f"127.0.0.1:{port}",
                                           "--port", str(common.free_port()),
                                           "--node-config", f"partition-id={i} num-partitions={clients}"], env=env)
        run_config = (f"num-server-rounds={warmup + rounds} params={params} tensors={TENSORS} clients={clients} "
                      f"evaluate={'true' if evaluate else 'false'} out=\"{out}\"")
        runner = procs.start("flwr-run", [str(bin_dir / "flwr"), "run", str(app), "bench",
                                          "--run-config", run_config, "--stream"], env=env)
        deadline = time.monotonic() + timeout
        while not out.is_file():
            # `flwr run --stream` can stop streaming (and exit 0) while the run goes on: only a
            # failed submission ends the wait; otherwise the ServerApp's file or the deadline does
            if runner.poll() is not None and runner.returncode != 0:
                raise RuntimeError(f"flwr run exited with {runner.returncode}:\n{procs.log('flwr-run')[-3000:]}")
            for name, proc in procs.procs.items():
                if name != "flwr-run" and proc.poll() is not None:
                    raise RuntimeError(f"Flower {name} exited with {proc.returncode}:\n{procs.log(name)[-2000:]}")
            if time.monotonic() > deadline:
                done = procs.log("flwr-run").count("configure_train: Sampled")
                raise RuntimeError(f"the Flower run did not finish in {timeout:g}s ({done} rounds started of "
                                   f"{warmup + rounds}; ClientApp task-token failures in the SuperNode logs: "
                                   f"{relaunches(procs, clients)}); logs in {procs.log_dir}")
            time.sleep(0.5)
        time.sleep(0.5)  # the ServerApp writes the file in one call; let it close
        data = json.loads(out.read_text())
        failures = relaunches(procs, clients)
    finally:
        kill_tree(procs)
    total = time.monotonic() - started
    records = [data["rounds"][str(r)] for r in range(1, warmup + rounds + 1)]
    timed = records[warmup:]
    ok = [r for r in timed if r.get("train_replies") == clients and not r.get("train_errors") and "end" in r]
    return {
        "rounds": len(records), "rounds_succeeded": sum(1 for r in records if r.get("train_replies") == clients),
        "rounds_timed": len(ok), "round_s": [r["end"] - r["start"] for r in ok],
        "train_s": [r["train_done"] - r["start"] for r in ok],
        "period_s": [b["start"] - a["start"] for a, b in zip(records[warmup:], records[warmup + 1:])],
        "wall_s": total, "max_abs_diff": data["max_abs_diff"],
        # Flower's FedAvg sums the weighted updates then divides: equal updates come back
        # within float32 rounding (|diff| ~1e-6 for these N(0, 1) values), not bit for bit
        "model_unchanged": data["max_abs_diff"] <= 1e-5,
        "final_dtypes": data["final_dtypes"], "clientapp_token_failures": failures,
    }


# ================================================================ the run
def run(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-bench-flower-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "flower_compare", "machine": common.machine(),
                              "clients": options.clients, "rounds": options.rounds, "warmup": options.warmup,
                              "repeats": options.repeats, "evaluate": options.evaluate,
                              "combiners": options.combiners, "flower_skipped": options.skip_flower,
                              "sizes": []}
    bin_dir = None
    if not options.skip_flower:
        bin_dir = ensure_flower_venv(Path(options.flower_venv))
        result["flower_versions"] = flower_versions(bin_dir)
    try:
        for params in options.params:
            seed = make_seed(work / f"seed-{params}", params)
            size: dict[str, Any] = {"params": params, "model_bytes": seed.stat().st_size,
                                    "flower_runs": [], "fedtier_runs": {str(c): [] for c in options.combiners},
                                    "errors": []}
            for repeat in range(options.repeats):
                tag = f"{common.human_count(params)}-r{repeat}"
                if bin_dir is not None:
                    print(f"[{tag}] Flower: superlink + {options.clients} supernodes, "
                          f"{options.warmup}+{options.rounds} rounds...", flush=True)
                    try:
                        run_ = run_flower(work / f"flower-{tag}", bin_dir, params, options.clients, options.rounds,
                                          options.warmup, options.evaluate, options.flower_round_limit)
                        size["flower_runs"].append(run_)
                        print(f"[{tag}] Flower: median round {common.fmt(common.summarize(run_['round_s'])['median'])}"
                              f" s ({run_['rounds_timed']} timed)", flush=True)
                    except Exception as exc:  # noqa: BLE001 - reported, the other runs go on
                        size["errors"].append(f"flower {tag}: {exc}")
                        traceback.print_exc()
                for combiners in options.combiners:
                    print(f"[{tag}] fedtier: reducer + {combiners} combiner(s) + {options.clients} clients...",
                          flush=True)
                    try:
                        run_ = run_fedtier(work / f"fedtier-{combiners}-{tag}", seed, int(combiners), options.clients,
                                           options.rounds, options.warmup, options.evaluate)
                        size["fedtier_runs"][str(combiners)].append(run_)
                        print(f"[{tag}] fedtier {combiners} combiner(s): median round "
                              f"{common.fmt(common.summarize(run_['round_s'])['median'])} s "
                              f"({run_['rounds_timed']} timed)", flush=True)
                    except Exception as exc:  # noqa: BLE001
                        size["errors"].append(f"fedtier {combiners} {tag}: {exc}")
                        traceback.print_exc()
                    finally:
                        if not options.keep:
                            shutil.rmtree(work / f"fedtier-{combiners}-{tag}" / "data", ignore_errors=True)
            seed.unlink(missing_ok=True)
            summarize_size(size)
            result["sizes"].append(size)
    finally:
        if not options.work_dir and not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["ok"] = all(not s["errors"] and s["fedtier_ok"] and (options.skip_flower or s["flower_ok"])
                       for s in result["sizes"])
    return result


def summarize_size(size: dict[str, Any]) -> None:
    flower_rounds = [t for r in size["flower_runs"] for t in r["round_s"]]
    size["flower"] = {
        "round_s": common.summarize(flower_rounds),
        "run_medians_s": [common.summarize(r["round_s"])["median"] for r in size["flower_runs"]],
        "period_s": common.summarize(t for r in size["flower_runs"] for t in r["period_s"]),
        "rounds_timed": len(flower_rounds),
        "rounds": sum(r["rounds"] for r in size["flower_runs"]),
        "rounds_succeeded": sum(r["rounds_succeeded"] for r in size["flower_runs"]),
        "model_unchanged": all(r["model_unchanged"] for r in size["flower_runs"]),
        "max_abs_diff": max((r["max_abs_diff"] for r in size["flower_runs"]), default=None),
        "clientapp_token_failures": sum(r.get("clientapp_token_failures", 0) for r in size["flower_runs"]),
    }
    size["flower_ok"] = bool(size["flower_runs"]) and size["flower"]["rounds"] == size["flower"]["rounds_succeeded"]
    size["fedtier"] = {}
    size["ratio_vs_flower"] = {}
    for combiners, runs in size["fedtier_runs"].items():
        rounds = [t for r in runs for t in r["round_s"]]
        phases = sorted({p for r in runs for p in r["phases"]})
        entry = {
            "round_s": common.summarize(rounds),
            "run_medians_s": [common.summarize(r["round_s"])["median"] for r in runs],
            "period_s": common.summarize(t for r in runs for t in r["period_s"]),
            "phase_medians_s": {p: common.summarize(r["phases"][p]["median"] for r in runs if p in r["phases"])
                                ["median"] for p in phases},
            "rounds_timed": len(rounds), "rounds": sum(r["rounds"] for r in runs),
            "rounds_succeeded": sum(r["rounds_succeeded"] for r in runs),
            "model_unchanged": bool(runs) and all(r["model_unchanged"] for r in runs),
            "max_abs_diff": max((r["max_abs_diff"] for r in runs), default=None),
            "bytes_identical": bool(runs) and all(r["bytes_identical"] for r in runs),
            "startup_s": common.summarize(r["startup_s"] for r in runs),
        }
        size["fedtier"][combiners] = entry
        if size["flower"]["rounds_timed"] and rounds:
            size["ratio_vs_flower"][combiners] = common.ratio(entry["round_s"]["median"],
                                                              size["flower"]["round_s"]["median"])
    size["fedtier_ok"] = bool(size["fedtier"]) and all(
        e["rounds_timed"] and e["rounds"] == e["rounds_succeeded"] and e["model_unchanged"]
        for e in size["fedtier"].values())
    if "1" in size["fedtier"] and "2" in size["fedtier"] and size["fedtier"]["1"]["rounds_timed"] \
            and size["fedtier"]["2"]["rounds_timed"]:
        size["ratio_2_vs_1_combiners"] = common.ratio(size["fedtier"]["2"]["round_s"]["median"],
                                                      size["fedtier"]["1"]["round_s"]["median"])


TARGETS = {1_000_000: 0.1, 25_000_000: 0.3}


def unchanged(entry: dict[str, Any]) -> str:
    diff = entry.get("max_abs_diff")
    if not entry["model_unchanged"]:
        return f"NO (max |diff| {diff:.3g})" if isinstance(diff, float) else "NO"
    if entry.get("bytes_identical"):
        return "yes, bit for bit"
    return "yes, equal values" if diff == 0.0 else f"yes, max |diff| {diff:.2g}"


def report(result: dict[str, Any]) -> None:
    ms = lambda s: s["median"] * 1e3  # noqa: E731
    rows = []
    for size in result["sizes"]:
        f = size["flower"]
        p = common.human_count(size["params"])
        if f["rounds_timed"]:
            rows.append([p, size["model_bytes"] / MiB, f"Flower {result.get('flower_versions', {}).get('flwr', '')}",
                         f"{f['rounds_succeeded']}/{f['rounds']}", f["rounds_timed"], ms(f["round_s"]),
                         f["round_s"]["min"] * 1e3, f["round_s"]["max"] * 1e3,
                         ", ".join(common.fmt(v * 1e3) for v in f["run_medians_s"]), "1",
                         unchanged(f), f"{f['clientapp_token_failures']} ClientApp restarts"])
        for combiners, e in size["fedtier"].items():
            ratio = size["ratio_vs_flower"].get(combiners)
            target = TARGETS.get(size["params"])
            rows.append([p, size["model_bytes"] / MiB, f"fedtier, {combiners} combiner(s)",
                         f"{e['rounds_succeeded']}/{e['rounds']}", e["rounds_timed"],
                         ms(e["round_s"]) if e["rounds_timed"] else "-",
                         e["round_s"]["min"] * 1e3, e["round_s"]["max"] * 1e3,
                         ", ".join(common.fmt(v * 1e3) for v in e["run_medians_s"]),
                         common.fmt(ratio) + (f" (target <= {target})" if ratio is not None and target else "")
                         if ratio is not None else "-",
                         unchanged(e),
                         ", ".join(f"{k} {v * 1e3:.0f}" for k, v in e["phase_medians_s"].items() if k != "total")])
    evaluate = "on (Flower evaluates, fedtier validates, every round)" if result["evaluate"] else \
        "off on both (Flower fraction_evaluate=0, fedtier validate=false)"
    common.print_table(f"Round time against Flower: {result['clients']} clients (one process each), no-op training, "
                       f"{result['rounds']} timed rounds after {result['warmup']} per run, {result['repeats']} run(s); "
                       f"evaluation {evaluate} (ms)",
                       ["params", "model MiB", "framework", "ok", "timed", "median ms", "min ms", "max ms",
                        "run medians ms", "fedtier / Flower", "final model = seed", "notes (fedtier: phase medians ms)"], rows)
    for size in result["sizes"]:
        if "ratio_2_vs_1_combiners" in size:
            print(f"{common.human_count(size['params'])}: fedtier 2 combiners / 1 combiner = "
                  f"{size['ratio_2_vs_1_combiners']:.2f}")
        for error in size["errors"]:
            print(f"  error: {error[:400]}")
    if result.get("flower_versions"):
        print("Flower venv: " + ", ".join(f"{k} {v}" for k, v in result["flower_versions"].items()))
    print("\n" + common.machine_line(result["machine"]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures are ratios against Flower measured in the same run.")
    p.add_argument("--params", type=common.parse_list, default=[1_000_000, 25_000_000],
                   help="float32 parameters of the model, comma-separated, k/M allowed (default 1M,25M)")
    p.add_argument("--clients", type=int, default=10, help="client processes on each side (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds per run (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds at the start of every run (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each framework per model size, interleaved "
                                                          "(default 1)")
    p.add_argument("--combiners", type=lambda s: [str(c) for c in common.parse_list(s, int)], default=["1", "2"],
                   help="fedtier combiner counts to run (default 1,2)")
    p.add_argument("--evaluate", action="store_true",
                   help="evaluate every round on both sides (default: off on both)")
    p.add_argument("--skip-flower", action="store_true", help="run fedtier's side only (no Flower venv needed)")
    p.add_argument("--flower-venv", default=str(DEFAULT_FLOWER_VENV),
                   help=f"Flower's own virtualenv, created if missing (default {DEFAULT_FLOWER_VENV.relative_to(common.ROOT)})")
    p.add_argument("--flower-round-limit", type=float, default=120.0,
                   help="a Flower run is abandoned after 300 s + this many seconds per round (default 120)")
    common.add_output_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    # SIGTERM (and SIGINT, which a shell's background job ignores) must run the clean-up
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if options.clients < 1 or options.rounds < 1 or options.warmup < 0 or options.repeats < 1:
        raise SystemExit("--clients, --rounds and --repeats must be at least 1, --warmup at least 0")
    return common.conclude(run(options), report, options.json)


if __name__ == "__main__":
    sys.exit(main())
