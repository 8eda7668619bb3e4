"""The lab against Flower's simulation engine: the same workload, side by side, in one run.

    .venv/bin/python bench/flower_simulation.py [--clients 1000] [--per-round 100] [--rounds 10]
                                                [--seed 0] [--skip-flower] [--skip-fedtier]
                                                [--flower-cpus 1] [--workers 2] [--json out.json]

The workload (issue 16, "Side by side with Flower's simulation"): MNIST's 60,000 training
images split IID over ``--clients`` clients by ``fedtier.datatools.partition`` (seed
``--seed``), ``--per-round`` clients sampled per round, the CNN of
test_projects/mnist-pytorch (its ``model.build_model``, 54k parameters) starting from the
project's seed weights (``seed.py --seed SEED``: ``torch.manual_seed(SEED)``, as the lab seeds it), one local epoch with the
project's learning rate, batch size and momentum, FedAvg weighted by examples,
``--rounds`` rounds; then accuracy on the 10,000 test images.

Each client trains on exactly what the project gives partition k in fedtier: the IID share,
shuffled and split 80/20 into train/validation the way test_projects/mnist-pytorch/data.py
does it (``train_indices`` below; tests/test_bench_smoke.py checks it against the project's
``load_partition``). The bench writes the indices, the raw images and the seed weights into
one ``.npz`` in its scratch directory, which the Flower app reads: nothing is downloaded.

Three runs, each measured the same way: median round time, total time (from starting the
command to its results), peak memory (the sum of RSS over the whole process tree, sampled
with psutil every 0.2 s; Flower's local SuperLink detaches and Ray starts its own daemons,
so for Flower every process started from its virtualenv and their descendants count) and
test accuracy after the last round:

- **in-process FedAvg**: a plain torch loop in this process, one client after another, the
  sampling drawn from ``numpy.random.default_rng(seed)``. The reference: both frameworks'
  accuracy must be within 1 point of it.
- **Flower** (its simulation engine, as its documentation shows for the installed release):
  a Flower app (ServerApp with Flower's own ``FedAvg``, ``fraction_train`` = per-round /
  clients; ClientApp training on ``node_config["partition-id"]``) written into the scratch
  directory and run with ``flwr run APP local --federation-config "num-supernodes=N
  client-resources-num-cpus=C"``: the local SuperLink in simulation mode, the Ray backend.
  The local SuperLink is started by the bench with the command ``flwr`` itself would use
  (flwr/cli/local_superlink.py), on free ports, so it can be stopped and measured. The
  architecture, the optimizer and the scoring are the project's own source, copied into the
  app with ``inspect.getsource``. ``client-resources-num-cpus`` is 1 (``--flower-cpus``;
  Flower's default of 2 would train one client at a time on two cores). Every global model is
  scored on the test set by an ``evaluate_fn`` (the lab's reducer scores each one inside its
  round too). Round time: a subclass of FedAvg stamps ``configure_train``, the end of
  ``aggregate_train`` (training only) and the end of the evaluation (the round).
- **fedtier**: ``fedtier lab SCENARIO`` (the scenario written by ``write_scenario``), round
  times and accuracy from the lab's ``summary.json``.

``--reference-seeds K`` also runs the in-process FedAvg with sampling seeds seed+1..seed+K-1 on
the same partition: how far accuracy moves by chance, to read the 1-point agreement against.
Each side's table also gives the CPU seconds per kind of process (``role_of``), a profile at the
level of processes.

Flower is installed into its own virtualenv (``bench/.flower-venv``, the one
bench/flower_compare.py makes) with the simulation extra and torch, pinned to the CPU build.
``--skip-flower`` / ``--skip-fedtier`` leave a side out.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import BENCH, MiB, ROOT  # noqa: E402
from flower_compare import DEFAULT_FLOWER_VENV, FLWR_VERSION, ensure_flower_venv  # noqa: E402

from fedtier.datatools.datasets import load_mnist  # noqa: E402
from fedtier.datatools.partition import partition_from_config  # noqa: E402

TORCH_VERSION = "2.13.0"  # the release fedtier's own .venv has (the CPU build)
PROJECT = ROOT / "test_projects" / "mnist-pytorch"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"
SAMPLE_INTERVAL = 0.2  # seconds between memory samples
ACCURACY_TOLERANCE = 0.01  # the "within 1 point"


# ================================================================ the project's code
def project_module(name: str) -> ModuleType:
    """A module of test_projects/mnist-pytorch (``model``, ``data``, ``entrypoints``), imported
    from its folder as the client imports it, so the bench runs the project's own code."""
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "")).parent == PROJECT:
        return module
    spec = importlib.util.spec_from_file_location(name, PROJECT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: ``--learning-rate``: every side trains with it instead of the project's default
LEARNING_RATE: float | None = None


def hyperparameters() -> dict[str, Any]:
    """The project's learning rate (or ``--learning-rate``), batch size and momentum, with one local epoch."""
    entry = project_module("entrypoints")
    rate = LEARNING_RATE if LEARNING_RATE is not None else float(entry.DEFAULTS["learning_rate"])
    return {"epochs": 1, "learning_rate": rate,
            "batch_size": int(entry.DEFAULTS["batch_size"]), "momentum": float(entry.MOMENTUM)}


def seed_state(seed: int = 0) -> dict[str, np.ndarray]:
    """The project's initial weights (seed.py: ``torch.manual_seed(seed)`` then ``build_model``)."""
    import torch

    model = project_module("model")
    torch.manual_seed(seed)
    return {k: v.detach().numpy().copy() for k, v in model.build_model().state_dict().items()}


# ================================================================ the partition
def train_indices(labels: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
    """Each client's training images (indices into the 60,000), as the project computes them.

    test_projects/mnist-pytorch/data.py: the IID partition of ``fedtier.datatools.partition``
    (``{"scheme": "iid", "seed": seed}``), each share permuted with ``[SUBSET_SEED, k]`` and its
    first ``VAL_FRACTION`` held out for validation. Replicated rather than called because the
    project returns the images, not their indices, and the Flower app needs the indices.
    """
    data = project_module("data")
    parts = partition_from_config(labels, clients, {"scheme": "iid", "seed": seed})
    out = []
    for index, part in enumerate(parts):
        part = np.random.default_rng([data.SUBSET_SEED, index]).permutation(part)
        n_val = min(max(1, round(len(part) * data.VAL_FRACTION)), len(part) - 1)
        out.append(np.sort(part[n_val:]))
    return out


def standardise(images: np.ndarray) -> np.ndarray:
    data = project_module("data")
    return ((images.astype(np.float32) / 255.0 - data.MEAN) / data.STD).astype(np.float32)


def write_workload(path: Path, data_dir: Path, clients: int, seed: int) -> dict[str, Any]:
    """The .npz the Flower app reads: raw images, the clients' indices, the seed weights."""
    x_train, y_train = load_mnist(data_dir, "train")
    x_test, y_test = load_mnist(data_dir, "test")
    parts = train_indices(y_train, clients, seed)
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    weights = seed_state(seed)  # the lab seeds its network with seed.py --seed <scenario seed>
    data = project_module("data")
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             indices=np.concatenate(parts).astype(np.int64), offsets=offsets,
             mean=np.float32(data.MEAN), std=np.float32(data.STD),
             weight_names=np.array(list(weights)), **{f"w_{i}": w for i, w in enumerate(weights.values())})
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "parts": parts,
            "weights": weights}


def sample_rounds(clients: int, per_round: int, rounds: int, seed: int) -> list[list[int]]:
    """Which clients train in each round of the in-process FedAvg (sorted, for reading)."""
    rng = np.random.default_rng(seed)
    return [sorted(int(c) for c in rng.choice(clients, size=per_round, replace=False)) for _ in range(rounds)]


def task_seed(round_number: int, client: int, seed: int) -> int:
    """The shuffle of a (round, client) pair under a run's seed: fixed, different between pairs
    (the same function in the Flower app)."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{round_number}|{client}".encode()).digest()[:8], "little")


# ================================================================ in-process FedAvg
def local_train(model: Any, x: np.ndarray, y: np.ndarray, hp: dict[str, Any], seed: int) -> None:
    """One client's local training: the loop of the project's ``entrypoints.train``."""
    import torch
    from torch import nn

    entry = project_module("entrypoints")
    xt, yt = torch.tensor(x).unsqueeze(1), torch.tensor(y.astype(np.int64))
    optimizer = entry._SGDMomentum(model, lr=hp["learning_rate"], momentum=hp["momentum"])
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(hp["epochs"]):
        for batch in torch.randperm(len(xt), generator=generator).split(hp["batch_size"]):
            model.zero_grad()
            nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            optimizer.step()


def test_accuracy(state: dict[str, np.ndarray], x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy on the test images (the project's ``_metrics``), the same function for all three."""
    import torch

    model = project_module("model").build_model()
    model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state.items()})
    scores = project_module("entrypoints")._metrics(model, standardise(x_test), y_test.astype(np.int64))
    return float(scores[0])  # (accuracy, loss, ...)


def fedavg_in_process(workload: dict[str, Any], per_round: int, rounds: int, seed: int,
                      on_round: Callable[[int, float], None] | None = None,
                      score_rounds: bool = False) -> dict[str, Any]:
    """FedAvg over the same partition in this process: the reference accuracy, and the time the
    training itself takes on one thread (no framework at all)."""
    import torch

    torch.set_num_threads(1)
    hp = hyperparameters()
    build = project_module("model").build_model
    state = {k: torch.tensor(v) for k, v in workload["weights"].items()}
    parts, x_train, y_train = workload["parts"], workload["x_train"], workload["y_train"]
    sampled = sample_rounds(len(parts), per_round, rounds, seed)
    times: list[float] = []
    accuracies: list[float] = []
    scoring = 0.0  # seconds spent scoring rounds, left out of the times: the reference has no framework
    started = time.monotonic()
    for number, chosen in enumerate(sampled, start=1):
        t0 = time.monotonic()
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
        examples = 0
        for client in chosen:
            model = build()
            model.load_state_dict(state)
            idx = parts[client]
            local_train(model, standardise(x_train[idx]), y_train[idx], hp, task_seed(number, client, seed))
            for k, v in model.state_dict().items():
                total[k] += v.double() * len(idx)
            examples += len(idx)
        state = {k: (v / examples).float() for k, v in total.items()}
        times.append(time.monotonic() - t0)
        if on_round:
            on_round(number, times[-1])
        if score_rounds:
            t1 = time.monotonic()
            accuracies.append(test_accuracy({k: v.numpy() for k, v in state.items()},
                                            workload["x_test"], workload["y_test"]))
            scoring += time.monotonic() - t1
    final = {k: v.numpy() for k, v in state.items()}
    return {"round_s": times, "total_s": time.monotonic() - started - scoring, "sampled": sampled,
            "round_accuracy": accuracies,
            "test_accuracy": test_accuracy(final, workload["x_test"], workload["y_test"])}


# ================================================================ memory
class TreeMemory:
    """Peak of the summed RSS of a set of processes, sampled every ``interval`` seconds, and the
    CPU seconds each kind of process used (a profile at the level of processes: which part of a
    framework the machine's time went to).

    ``roots()`` is called at every sample: each root and all its descendants count, so
    processes started late (Ray's workers, the swarm's pool) are caught the moment they exist.
    CPU is read at every sample, so a process that lives less than ``interval`` is missed and
    one that exits loses at most its last ``interval``.
    """

    def __init__(self, roots: Callable[[], Iterable[psutil.Process]], interval: float = SAMPLE_INTERVAL) -> None:
        self.roots, self.interval = roots, interval
        self.peak_bytes, self.peak_processes, self.samples = 0, 0, 0
        self._cpu: dict[tuple[int, float], tuple[str, float]] = {}  # (pid, start) -> (role, cpu seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        procs: dict[int, psutil.Process] = {}
        for root in self.roots():
            for proc in [root, *_descendants(root)]:
                procs[proc.pid] = proc
        total = 0
        for proc in procs.values():
            try:
                with proc.oneshot():
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    # read each time (Ray's workers retitle themselves), but an exited process's
                    # empty command line does not replace the name it had
                    role = role_of(proc.cmdline())
                    if role == "?" and key in self._cpu:
                        role = self._cpu[key][0]
                self._cpu[key] = (role, times.user + times.system)
            except psutil.Error:
                pass
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(procs)
        self.samples += 1
        return total

    def cpu_by_role(self) -> dict[str, dict[str, float]]:
        """CPU seconds and process count per kind of process, largest first."""
        roles: dict[str, dict[str, float]] = {}
        for role, seconds in self._cpu.values():
            entry = roles.setdefault(role, {"cpu_s": 0.0, "processes": 0})
            entry["cpu_s"] += seconds
            entry["processes"] += 1
        return dict(sorted(roles.items(), key=lambda item: -item[1]["cpu_s"]))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


FEDTIER_GLOBAL_OPTIONS = ("--env-file", "--log-level")  # fedtier's options before its command, with a value


def role_of(cmdline: Sequence[str]) -> str:
    """A short name for a process from its command line: ``fedtier combiner``, ``python -m
    fedtier.reducer.evaluation``, ``raylet``, ``ray::ClientAppActor``, ``multiprocessing worker``..."""
    if not cmdline:
        return "?"
    if len(cmdline) == 1 and " " in cmdline[0]:  # Ray's workers rewrite their title into one string
        cmdline = cmdline[0].split()
    head, args = Path(cmdline[0]).name, list(cmdline[1:])
    if head.startswith("ray::"):
        return head
    if head.startswith("python"):
        if "-c" in args:
            code = " ".join(args[args.index("-c") + 1:args.index("-c") + 2])
            return "multiprocessing " + ("resource tracker" if "resource_tracker" in code else "worker") \
                if "multiprocessing" in code else "python -c"
        if "-m" in args and args.index("-m") + 1 < len(args):
            module = args[args.index("-m") + 1]
            if module != "fedtier.launch.cli":
                return f"python -m {module}"
            head, args = "fedtier", args[args.index("-m") + 2:]
        else:
            script = next((a for a in args if not a.startswith("-")), "")
            if not script:
                return head
            head, args = Path(script).name, args[args.index(script) + 1:]
    if head == "fedtier":
        while args and args[0].startswith("-"):
            args = args[2:] if args[0] in FEDTIER_GLOBAL_OPTIONS else args[1:]
    if head in ("fedtier", "flwr") and args:
        return f"{head} {args[0]}"
    return head


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def processes_of(pids: Callable[[], Iterable[int]], marker: str = "", since: float = 0.0) -> list[psutil.Process]:
    """The processes with these pids, and (with ``marker``) every process started after ``since``
    whose command line names ``marker`` (detached ones: Flower's SuperLink, Ray's daemons)."""
    found = []
    for pid in pids():
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            pass
    if marker:
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            try:
                if proc.info["create_time"] >= since and marker in " ".join(proc.info["cmdline"] or ()):
                    found.append(proc)
            except psutil.Error:
                pass
    return found


# ================================================================ Flower
def ensure_simulation_venv(venv: Path, version: str = FLWR_VERSION) -> Path:
    """Flower's virtualenv (bench/flower_compare.py's, created by it) with the simulation extra
    (Ray) and torch; returns its bin/.

    torch is installed first and pinned, so pip takes the CPU wheel already on this machine
    and never resolves a CUDA build (Ray does not depend on torch: nothing replaces it later).
    """
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not _imports(python, "torch"):
        print(f"installing torch=={TORCH_VERSION} into {venv}...", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"torch=={TORCH_VERSION}"], check=True)
    bin_dir = ensure_flower_venv(venv, version)
    if not _imports(python, "ray"):
        print(f"installing flwr[simulation]=={version} (Ray) into {venv}...", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"flwr[simulation]=={version}",
                        f"torch=={TORCH_VERSION}"], check=True)
    return bin_dir


def _imports(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0


def flower_versions(bin_dir: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({p: m.version(p) for p in ('flwr', 'ray', 'torch', 'numpy')}))")
    done = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True)
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"error": done.stderr.strip()[-300:]}


PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedtiersim"
version = "1.0.0"
description = "MNIST CNN FedAvg, the workload of fedtier's bench/flower_simulation.py"
license = "Apache-2.0"
dependencies = ["flwr[simulation]=={flwr}", "torch=={torch}", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedtier-bench"

[tool.flwr.app.components]
serverapp = "fedtiersim.server_app:app"
clientapp = "fedtiersim.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 10
fraction-train = 0.1
per-round = 100
clients = 1000
workload = ""
out = ""
seed = 0
learning-rate = 0.01
batch-size = 16
momentum = 0.9
epochs = 1
"""

TASK = '''\
"""The model, the optimizer and the data of fedtier's bench: the architecture and the optimizer
are test_projects/mnist-pytorch's source, copied in by the bench (inspect.getsource)."""
import hashlib

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10
EVAL_BATCH = 1000

{build_model}

{as_images}

{metrics}

{optimizer}

_WORKLOAD = {{}}


def workload(path):
    """The bench's .npz, read once per process (every ClientApp call in a Ray actor reuses it)."""
    if path not in _WORKLOAD:
        with np.load(path) as data:
            _WORKLOAD[path] = {{k: data[k] for k in data.files}}
    return _WORKLOAD[path]


def standardise(images, data):
    return ((images.astype(np.float32) / 255.0 - data["mean"]) / data["std"]).astype(np.float32)


def client_data(path, client):
    data = workload(path)
    idx = data["indices"][data["offsets"][client]:data["offsets"][client + 1]]
    return standardise(data["x_train"][idx], data), data["y_train"][idx].astype(np.int64)


def test_set(path):
    data = workload(path)
    if "test" not in data:
        data["test"] = (standardise(data["x_test"], data), data["y_test"].astype(np.int64))
    return data["test"]


def seed_state(path):
    data = workload(path)
    return {{str(name): torch.tensor(data[f"w_{{i}}"]) for i, name in enumerate(data["weight_names"])}}


def task_seed(round_number, client, seed):
    return int.from_bytes(hashlib.sha256(f"{{seed}}|{{round_number}}|{{client}}".encode()).digest()[:8], "little")
'''

CLIENT_APP = '''\
"""ClientApp: one local epoch on the partition this virtual SuperNode holds."""
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedtiersim.task import _SGDMomentum, build_model, client_data, task_seed

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cfg = context.run_config
    client = int(context.node_config["partition-id"])
    x, y = client_data(cfg["workload"], client)
    xt, yt = torch.tensor(x).unsqueeze(1), torch.tensor(y)
    model = build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = _SGDMomentum(model, lr=float(cfg["learning-rate"]), momentum=float(cfg["momentum"]))
    generator = torch.Generator().manual_seed(task_seed(int(msg.content["config"]["server-round"]), client,
                                                     int(cfg["seed"])))
    model.train()
    for _ in range(int(cfg["epochs"])):
        for batch in torch.randperm(len(xt), generator=generator).split(int(cfg["batch-size"])):
            model.zero_grad()
            nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            optimizer.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(y), "partition-id": client})})
    return Message(content=content, reply_to=msg)
'''

SERVER_APP = '''\
"""ServerApp: Flower's FedAvg with central evaluation of every global model on the test set (as
the lab's reducer scores each one); a round is timed from configure_train to the end of that
evaluation, with the end of aggregate_train stamped too."""
import json
import os
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedtiersim.task import _metrics, build_model, seed_state, test_set

app = ServerApp()


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
        record["replies"] = sum(1 for r in replies if not r.has_error())
        record["errors"] = sum(1 for r in replies if r.has_error())
        record["partitions"] = sorted(int(r.content["metrics"]["partition-id"]) for r in replies
                                      if not r.has_error())
        out = super().aggregate_train(server_round, replies)
        record["trained"] = time.time()
        return out


def evaluator(strategy, path):
    def evaluate(server_round, arrays):
        if server_round == 0:  # the seed model: not part of any round
            return None
        torch.set_num_threads(1)
        model = build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracy, loss = _metrics(model, *test_set(path))[:2]
        strategy.rounds[server_round].update(end=time.time(), test_accuracy=accuracy)
        return MetricRecord({"test_accuracy": accuracy, "test_loss": loss})
    return evaluate


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    clients = int(cfg["clients"])
    # fraction_train samples int(nodes * fraction); min_train_nodes keeps float rounding
    # (0.29 * 100 = 28.99...) from sampling one client fewer than asked
    strategy = TimedFedAvg(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0,
                           min_train_nodes=int(cfg["per-round"]), min_available_nodes=clients,
                           min_evaluate_nodes=0)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(seed_state(cfg["workload"])),
                            num_rounds=int(cfg["num-server-rounds"]),
                            evaluate_fn=evaluator(strategy, cfg["workload"]))
    state = result.arrays.to_torch_state_dict()
    np.savez(cfg["out"] + ".npz", **{k: v.numpy() for k, v in state.items()})
    with open(cfg["out"] + ".tmp", "w") as f:
        json.dump({"rounds": strategy.rounds}, f)
    os.replace(cfg["out"] + ".tmp", cfg["out"])
'''


def write_flower_app(folder: Path) -> Path:
    """The Flower app (pyproject + package) with the project's model and optimizer source."""
    entry = project_module("entrypoints")
    model = project_module("model")
    app = folder / "app"
    package = app / "fedtiersim"
    package.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(PYPROJECT.replace("{flwr}", FLWR_VERSION).replace("{torch}", TORCH_VERSION))
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text(TASK.format(build_model=inspect.getsource(model.build_model),
                                                 as_images=inspect.getsource(entry._as_images),
                                                 metrics=inspect.getsource(entry._metrics),
                                                 optimizer=inspect.getsource(entry._SGDMomentum)))
    (package / "client_app.py").write_text(CLIENT_APP)
    (package / "server_app.py").write_text(SERVER_APP)
    return app


def run_flower(work: Path, bin_dir: Path, npz: Path, clients: int, per_round: int, rounds: int, seed: int,
               cpus_per_client: int, timeout: float) -> dict[str, Any]:
    """One Flower simulation run; its round times, final weights, time and peak memory."""
    work.mkdir(parents=True, exist_ok=True)
    app = write_flower_app(work)
    home = work / "flwr-home"
    home.mkdir(exist_ok=True)
    # the Flower Configuration `flwr` writes on first use: the "local" connection starts (or
    # finds) a local SuperLink in simulation mode
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    link_port, control_port = common.free_port(), common.free_port()
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "VIRTUAL_ENV": str(bin_dir.parent), "PYTHONUNBUFFERED": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(link_port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control_port), "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("PYTHONPATH", "VIRTUAL_ENV_PROMPT"):
        env.pop(key, None)
    out = work / "result.json"
    procs = common.Processes(work / "logs")
    venv_marker = str(bin_dir.parent.resolve())
    since = time.time() - 1
    memory = TreeMemory(lambda: processes_of(lambda: [p.pid for p in procs.procs.values()], venv_marker, since))
    started = time.monotonic()
    with memory:
        try:
            # flwr/cli/local_superlink.py's command (less its --control-api-address, deprecated in 1.41:
            # the Control API is served on the same HTTP port) (the one `flwr run APP local` starts when no
            # local SuperLink answers), started here so it is ours to measure and stop; runtime
            # installation of the app's dependencies is off: they are installed already
            link = procs.start("superlink", [
                str(bin_dir / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                "--host", "127.0.0.1",
                "--port", str(link_port), "--database", str(home / "state.db"),
                "--disable-runtime-dependency-installation"], env=env)
            common.wait_for_port(link_port, timeout=120, proc=link)
            run_config = (f"num-server-rounds={rounds} fraction-train={per_round / clients!r} per-round={per_round} "
                          f"clients={clients} seed={seed} "
                          f'workload="{npz}" out="{out}"')
            for key, value in hyperparameters().items():
                run_config += f" {key.replace('_', '-')}={value!r}"
            federation = f"num-supernodes={clients} client-resources-num-cpus={cpus_per_client}"
            runner = procs.start("flwr-run", [str(bin_dir / "flwr"), "run", str(app), "local",
                                              "--run-config", run_config, "--federation-config", federation,
                                              "--stream"], env=env)
            deadline = time.monotonic() + timeout
            while not out.is_file():
                if runner.poll() is not None and runner.returncode != 0:
                    raise RuntimeError(f"flwr run exited with {runner.returncode}:\n{procs.log('flwr-run')[-3000:]}")
                if link.poll() is not None:
                    raise RuntimeError(f"the SuperLink exited with {link.returncode}:\n{procs.log('superlink')[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Flower run did not finish in {timeout:g}s; logs in {procs.log_dir}:\n"
                                       f"{procs.log('flwr-run')[-2000:]}")
                time.sleep(0.2)
            total = time.monotonic() - started
        finally:
            stop_flower(procs, venv_marker, since)
    data = json.loads(out.read_text())
    with np.load(str(out) + ".npz") as arrays:
        final = {k: arrays[k] for k in arrays.files}
    records = [data["rounds"][str(r)] for r in range(1, rounds + 1) if str(r) in data["rounds"]]
    return {"round_s": [r["end"] - r["start"] for r in records],
            "train_s": [r["trained"] - r["start"] for r in records],
            "round_accuracy": [r["test_accuracy"] for r in records],
            "period_s": [b["start"] - a["start"] for a, b in zip(records, records[1:])],
            "replies": [r["replies"] for r in records], "errors": sum(r["errors"] for r in records),
            "sampled": [r["partitions"] for r in records], "total_s": total, "final": final,
            "peak_rss_bytes": memory.peak_bytes, "peak_processes": memory.peak_processes,
            "memory_samples": memory.samples, "cpu_by_role": memory.cpu_by_role(), "logs": str(procs.log_dir)}


def stop_flower(procs: common.Processes, marker: str, since: float) -> None:
    """Stop the SuperLink, `flwr run` and everything Flower and Ray started from the venv:
    freeze them all first (Ray restarts workers that die), then kill."""
    found: dict[int, psutil.Process] = {}
    for _ in range(3):
        for proc in processes_of(lambda: [p.pid for p in procs.procs.values()], marker, since):
            for p in [proc, *_descendants(proc)]:
                if p.pid not in found and p.pid != os.getpid():
                    try:
                        p.suspend()
                        found[p.pid] = p
                    except psutil.Error:
                        pass
    for p in found.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(found.values()), timeout=10)
    for proc in procs.procs.values():
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


# ================================================================ fedtier's lab
def lab_available() -> bool:
    return importlib.util.find_spec("fedtier.launch.lab") is not None


def write_scenario(path: Path, data_dir: Path, clients: int, per_round: int, rounds: int, seed: int,
                   workers: int, combiners: int, round_timeout: float) -> Path:
    """The lab scenario of this workload (docs/notes: the scenario's shape is the lab's)."""
    import yaml

    hp = hyperparameters()
    scenario = {
        "project": str(PROJECT), "data_path": str(data_dir), "combiners": combiners, "clients": clients,
        "rounds": rounds, "sampling": {"count": per_round}, "pool": {"workers": workers, "threads": 1},
        "session": {"clients_required": per_round, "round_timeout": round_timeout,
                    "task": {"epochs": hp["epochs"], "learning_rate": hp["learning_rate"],
                             "batch_size": hp["batch_size"]}},
        "data": {"partition": {"scheme": "iid", "seed": seed}},
        "seed": seed,
        "output": {"plots": False},  # the run's figures, not drawing them: Flower draws none either
    }
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def run_fedtier(work: Path, scenario: Path, timeout: float) -> dict[str, Any]:
    """``fedtier lab SCENARIO --out DIR``: the lab's summary, time and peak memory."""
    work.mkdir(parents=True, exist_ok=True)
    out_dir = work / "lab"
    fedtier = Path(sys.executable).parent / "fedtier"
    procs = common.Processes(work / "logs")
    memory = TreeMemory(lambda: processes_of(lambda: [p.pid for p in procs.procs.values()]))
    started = time.monotonic()
    with memory:
        try:
            lab = procs.start("lab", [str(fedtier), "lab", str(scenario), "--out", str(out_dir)])
            try:
                lab.wait(timeout)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"fedtier lab did not finish in {timeout:g}s; logs in {procs.log_dir}") from None
            total = time.monotonic() - started
        finally:
            children = [p for proc in processes_of(lambda: [p.pid for p in procs.procs.values()])
                        for p in _descendants(proc)]
            procs.stop_all()
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass
    summary_path = out_dir / "summary.json"
    if lab.returncode != 0 or not summary_path.is_file():
        raise RuntimeError(f"fedtier lab exited with {lab.returncode}:\n{procs.log('lab')[-3000:]}")
    summary = json.loads(summary_path.read_text())
    rounds = summary.get("rounds") or []
    accuracy = next((r.get("test_accuracy") for r in reversed(rounds) if r.get("test_accuracy") is not None), None)
    return {"round_s": [float(r["seconds"]) for r in rounds if r.get("seconds") is not None],
            "round_accuracy": [r.get("test_accuracy") for r in rounds],
            "updates": [r.get("updates") for r in rounds],
            "rounds_done": len(rounds), "total_s": total, "test_accuracy": accuracy,
            "peak_rss_bytes": memory.peak_bytes, "peak_processes": memory.peak_processes,
            "memory_samples": memory.samples, "cpu_by_role": memory.cpu_by_role(),
            "lab_reported_peak_rss_bytes": summary.get("processes_peak_rss_bytes"),
            "summary": str(summary_path), "logs": str(procs.log_dir)}


# ================================================================ the run
def run(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-bench-flowersim-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = Path(options.data_path)
    result: dict[str, Any] = {"benchmark": "flower_simulation", "machine": common.machine(),
                              "clients": options.clients, "per_round": options.per_round, "rounds": options.rounds,
                              "seed": options.seed, "hyperparameters": hyperparameters(), "errors": []}
    try:
        npz = work / "workload.npz"
        workload = write_workload(npz, data_dir, options.clients, options.seed)
        result["train_images_per_client"] = common.summarize(len(p) for p in workload["parts"])
        result["seed_accuracy"] = test_accuracy(workload["weights"], workload["x_test"], workload["y_test"])

        print(f"in-process FedAvg: {options.clients} clients, {options.per_round} per round, "
              f"{options.rounds} rounds...", flush=True)
        memory = TreeMemory(lambda: [psutil.Process()])
        with memory:
            reference = fedavg_in_process(workload, options.per_round, options.rounds, options.seed,
                                          lambda n, t: print(f"  round {n}: {t:.2f} s", flush=True),
                                          score_rounds=True)
        reference["peak_rss_bytes"] = memory.peak_bytes
        result["in_process"] = reference
        print(f"in-process FedAvg: accuracy {reference['test_accuracy']:.4f}", flush=True)
        # the same partition, other sampling and shuffle seeds: how far accuracy moves by chance
        spread = [reference["test_accuracy"]]
        for other in range(options.seed + 1, options.seed + options.reference_seeds):
            spread.append(fedavg_in_process(workload, options.per_round, options.rounds, other)["test_accuracy"])
            print(f"in-process FedAvg, sampling seed {other}: accuracy {spread[-1]:.4f}", flush=True)
        result["in_process_seeds"] = {"seeds": list(range(options.seed, options.seed + options.reference_seeds)),
                                      "test_accuracy": spread, **common.summarize(spread)}

        timeout = 600 + options.rounds * options.round_limit
        for repeat in range(options.repeats):  # interleaved, so both meet the same machine
            suffix = f"-{repeat}" if repeat else ""
            if not options.skip_flower:
                try:
                    bin_dir = ensure_simulation_venv(Path(options.flower_venv))
                    result["flower_versions"] = flower_versions(bin_dir)
                    print(f"Flower simulation{suffix}: {options.clients} SuperNodes, {options.flower_cpus} CPU per "
                          f"ClientApp...", flush=True)
                    flower = run_flower(work / f"flower{suffix}", bin_dir, npz, options.clients, options.per_round,
                                        options.rounds, options.seed, options.flower_cpus, timeout)
                    flower["test_accuracy"] = test_accuracy(flower.pop("final"), workload["x_test"],
                                                            workload["y_test"])
                    _keep_run(result, "flower", flower)
                    print(f"Flower: median round {common.fmt(common.summarize(flower['round_s'])['median'])} s, "
                          f"accuracy {flower['test_accuracy']:.4f}", flush=True)
                except Exception as exc:  # noqa: BLE001 - reported, the other side still runs
                    result["errors"].append(f"flower: {exc}")
                    traceback.print_exc()
            if not options.skip_fedtier:
                try:
                    if not lab_available():
                        raise RuntimeError("fedtier lab is not in this checkout (fedtier.launch.lab); "
                                           "use --skip-fedtier")
                    scenario = write_scenario(work / f"scenario{suffix}.yaml", data_dir, options.clients,
                                              options.per_round, options.rounds, options.seed, options.workers,
                                              options.combiners, options.round_limit)
                    print(f"fedtier lab{suffix}: {options.clients} clients, {options.combiners} combiners, "
                          f"{options.workers} workers...", flush=True)
                    fed = run_fedtier(work / f"fedtier{suffix}", scenario, timeout)
                    fed["scenario"] = scenario.read_text()
                    _keep_run(result, "fedtier", fed)
                    print(f"fedtier: median round {common.fmt(common.summarize(fed['round_s'])['median'])} s, "
                          f"accuracy {fed['test_accuracy']}", flush=True)
                except Exception as exc:  # noqa: BLE001
                    result["errors"].append(f"fedtier: {exc}")
                    traceback.print_exc()
    finally:
        if not options.work_dir and not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    conclude_checks(result, options)
    return result


def _median(values: Iterable[float]) -> float:
    return common.summarize(list(values))["median"]


def _keep_run(result: dict[str, Any], side: str, run: dict[str, Any]) -> None:
    """The first run of a side is its block (tables, profile); every run adds to its ``runs``
    (accuracy, rounds, time, memory), which the figures across repeats are made of."""
    brief = {"test_accuracy": run["test_accuracy"], "round_s": run["round_s"], "total_s": run["total_s"],
             "peak_rss_bytes": run["peak_rss_bytes"]}
    if side not in result:
        result[side] = run
    result[side].setdefault("runs", []).append(brief)


def conclude_checks(result: dict[str, Any], options: argparse.Namespace) -> None:
    """Ratios, the accuracy agreement, and whether the run did what it should."""
    ref = result.get("in_process", {}).get("test_accuracy")
    checks: dict[str, Any] = {}
    for side in ("flower", "fedtier"):
        block = result.get(side)
        if not block:
            continue
        runs = block.get("runs") or [block]
        block["round"] = common.summarize(t for r in runs for t in r["round_s"])
        accuracies = [r["test_accuracy"] for r in runs if r.get("test_accuracy") is not None]
        acc = sum(accuracies) / len(accuracies) if accuracies else None
        block["test_accuracy_mean"] = acc
        # more than one run: their mean against the mean of as many in-process sampling seeds
        reference = ref
        if len(runs) > 1 and result.get("in_process_seeds"):
            reference = result["in_process_seeds"]["mean"]
        block["accuracy_vs_in_process"] = None if acc is None or reference is None else acc - reference
        checks[f"{side}_rounds_complete"] = all(len(r["round_s"]) == options.rounds for r in runs)
        checks[f"{side}_accuracy_within_1_point"] = (block["accuracy_vs_in_process"] is not None
                                                    and abs(block["accuracy_vs_in_process"]) <= ACCURACY_TOLERANCE)
    if "flower" in result and "fedtier" in result:
        f, t = result["flower"], result["fedtier"]
        result["ratios_fedtier_vs_flower"] = {
            "median_round": common.ratio(t["round"]["median"], f["round"]["median"]),
            "total": common.ratio(_median(r["total_s"] for r in t["runs"]), _median(r["total_s"] for r in f["runs"])),
            "peak_memory": common.ratio(max(r["peak_rss_bytes"] for r in t["runs"]),
                                        max(r["peak_rss_bytes"] for r in f["runs"])),
        }
    result["checks"] = checks
    ran_all = (options.skip_flower or "flower" in result) and (options.skip_fedtier or "fedtier" in result)
    result["ok"] = "in_process" in result and ran_all and all(checks.values())


def report(result: dict[str, Any]) -> None:
    rows = []
    ref = result.get("in_process")
    for name, key in (("in-process FedAvg (1 thread, no framework)", "in_process"),
                      (f"Flower {result.get('flower_versions', {}).get('flwr', '')} simulation (Ray)", "flower"),
                      ("fedtier lab", "fedtier")):
        block = result.get(key)
        if not block:
            continue
        round_ = common.summarize(block["round_s"])
        delta = block.get("accuracy_vs_in_process")
        rows.append([name, f"{len(block['round_s'])}/{result['rounds']}", round_["median"], round_["min"],
                     round_["max"], block["total_s"], block["peak_rss_bytes"] / MiB,
                     block.get("peak_processes", 1), block.get("test_accuracy"),
                     "-" if delta is None else f"{delta * 100:+.2f}"])
    common.print_table(
        f"MNIST CNN, {result['clients']} clients ({common.fmt(result.get('train_images_per_client', {}).get('median'))} "
        f"training images each), {result['per_round']} per round, {result['rounds']} rounds, one local epoch "
        f"(lr {result['hyperparameters']['learning_rate']}, batch {result['hyperparameters']['batch_size']}, "
        f"momentum {result['hyperparameters']['momentum']}), IID seed {result['seed']}",
        ["run", "rounds", "median round s", "min s", "max s", "total s", "peak RSS MiB (tree)", "processes at peak",
         "test accuracy", "vs in-process (points)"], rows)
    per_round = []
    for n in range(result["rounds"]):
        row: list[Any] = [n + 1]
        for key, field in (("in_process", "round_accuracy"), ("flower", "round_accuracy"),
                           ("fedtier", "round_accuracy"), ("in_process", "round_s"), ("flower", "round_s"),
                           ("flower", "train_s"), ("fedtier", "round_s")):
            values = (result.get(key) or {}).get(field) or []
            row.append(values[n] if n < len(values) else "-")
        per_round.append(row)
    if any(r[1:] != ["-"] * 7 for r in per_round):
        common.print_table("Per round: the global model's test accuracy, and the round's seconds",
                           ["round", "in-process acc", "Flower acc", "fedtier acc", "in-process s",
                            "Flower s", "Flower s (training only)", "fedtier s"], per_round)
    for key, name in (("flower", "Flower"), ("fedtier", "fedtier")):
        roles = (result.get(key) or {}).get("cpu_by_role")
        if roles:
            total = sum(r["cpu_s"] for r in roles.values())
            rows = [[role, int(r["processes"]), r["cpu_s"], f"{100 * r['cpu_s'] / total:.0f}%" if total else "-"]
                    for role, r in list(roles.items())[:10]]
            common.print_table(f"{name}: CPU seconds by kind of process over the whole run ({total:.1f} s in all)",
                               ["process", "count", "CPU s", "share"], rows)
    if ref:
        print(f"seed model accuracy {common.fmt(result.get('seed_accuracy'))}")
    seeds = result.get("in_process_seeds")
    if seeds and seeds["n"] > 1:
        print(f"in-process FedAvg over sampling seeds {seeds['seeds']}: accuracy "
              + ", ".join(f"{a:.4f}" for a in seeds["test_accuracy"])
              + f" (spread {(seeds['max'] - seeds['min']) * 100:.2f} points)")
    for key, name in (("flower", "Flower"), ("fedtier", "fedtier")):
        runs = (result.get(key) or {}).get("runs") or []
        if len(runs) > 1:
            block = result[key]
            print(f"{name} over {len(runs)} runs: accuracy " + ", ".join(f"{r['test_accuracy']:.4f}" for r in runs)
                  + f", mean {block['test_accuracy_mean']:.4f} ({block['accuracy_vs_in_process'] * 100:+.2f} points "
                  f"against the in-process mean); median round {block['round']['median']:.2f} s over all runs")
    if "ratios_fedtier_vs_flower" in result:
        r = result["ratios_fedtier_vs_flower"]
        print(f"fedtier / Flower: median round {r['median_round']:.2f}, total {r['total']:.2f}, "
              f"peak memory {r['peak_memory']:.2f}")
    for check, ok in result.get("checks", {}).items():
        print(f"  {check}: {'yes' if ok else 'NO'}")
    for error in result["errors"]:
        print(f"  error: {error[:600]}")
    if result.get("flower_versions"):
        print("Flower venv: " + ", ".join(f"{k} {v}" for k, v in result["flower_versions"].items()))
    print("\n" + common.machine_line(result["machine"]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures are measured in the same run; the ratios are fedtier / Flower.")
    p.add_argument("--clients", type=int, default=1000, help="virtual clients (default 1000)")
    p.add_argument("--per-round", type=int, default=100, help="clients sampled per round (default 100)")
    p.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    p.add_argument("--seed", type=int, default=0, help="partition and sampling seed (default 0)")
    p.add_argument("--data-path", default=str(DEFAULT_DATA), help="MNIST IDX files (default ../shared/data/mnist)")
    p.add_argument("--reference-seeds", type=int, default=3,
                   help="in-process FedAvg runs with sampling seeds seed, seed+1, ...: the accuracy one gets by "
                        "chance on the same partition (default 3)")
    p.add_argument("--flower-cpus", type=int, default=1,
                   help="CPUs per ClientApp in Flower's Ray backend (default 1: two at once on two cores)")
    p.add_argument("--workers", type=int, default=2, help="the lab's training worker processes (default 2)")
    p.add_argument("--combiners", type=int, default=2, help="the lab's combiners (default 2)")
    p.add_argument("--round-limit", type=float, default=300.0,
                   help="a run is abandoned after 600 s + this many seconds per round (default 300)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of Flower and of the lab, interleaved (default 1); with more, their mean accuracy "
                        "is checked against the mean of --reference-seeds in-process runs")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="local learning rate of every side (default: the project's, 0.01)")
    p.add_argument("--skip-flower", action="store_true", help="leave Flower out (no Flower virtualenv needed)")
    p.add_argument("--skip-fedtier", action="store_true", help="leave fedtier's lab out")
    p.add_argument("--flower-venv", default=str(DEFAULT_FLOWER_VENV),
                   help=f"Flower's own virtualenv, created if missing (default {DEFAULT_FLOWER_VENV.relative_to(ROOT)})")
    common.add_output_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if options.clients < 1 or not 1 <= options.per_round <= options.clients or options.rounds < 1 \
            or options.reference_seeds < 1 or options.repeats < 1:
        raise SystemExit("--clients, --rounds and --reference-seeds must be at least 1, "
                         "--per-round between 1 and --clients")
    if options.learning_rate is not None:
        if not 0 < options.learning_rate <= 10:
            raise SystemExit("--learning-rate must be in (0, 10]")
        global LEARNING_RATE
        LEARNING_RATE = options.learning_rate
    return common.conclude(run(options), report, options.json)


if __name__ == "__main__":
    sys.exit(main())
