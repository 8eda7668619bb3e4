"""The worker pool (client/pool.py): virtual clients' tasks trained in worker processes.

What it must keep: a task gives the same result as in-process training; tasks run in the
workers, with their CPU share; a worker that dies or overruns fails only its task and is
replaced; a swarm with workers never loads the project's framework itself and leaves no
process behind when it stops or is killed. The pool over a whole network (reducer,
combiners, rounds) is checked in tests/test_load.py.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from conftest import ROOT, ProcessGroup, wait_until
from fedtier.client.context import TaskContext
from fedtier.client.pool import WorkerPool
from fedtier.client.project import Project, ProjectError
from fedtier.combiner.server import CombinerServer, CombinerSettings
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.combiner_client import CombinerClient

DIGITS = ROOT / "test_projects" / "digits"
DIGITS_MODULES = ("model", "data", "entrypoints", "seed")

PROBE = '''
import json, os, shutil, time
from pathlib import Path

def train(in_path, out_path, ctx):
    Path(out_path + ".started").write_text("")
    time.sleep(float(ctx.config.get("sleep", 0)))
    shutil.copyfile(in_path, out_path)
    return {"num_examples": 1, "pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}

def validate(in_path, ctx):
    return {"num_examples": 1, "pid": os.getpid()}
'''


def probe_project(where: Path, task_timeout: float = 30, module: str = PROBE) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "pool_probe.py").write_text(module)
    (where / "fedn.yaml").write_text(f"helper: numpy\ntask_timeout: {task_timeout}\nentry_points:\n"
                                     "  train:\n    python: pool_probe:train\n"
                                     "  validate:\n    python: pool_probe:validate\n")
    (where / "in.model").write_bytes(b"model")
    return where


def context(tmp_path: Path, **config: object) -> TaskContext:
    return TaskContext(client_name="c0", partition_index=1, num_partitions=3, round_number=2, session_id="s",
                       config=config, work_dir=tmp_path)


def gone(pid: int) -> bool:
    """The process exited (an exited child of init not reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def digits_in_process() -> Iterator[Project]:
    """The digits project loaded in this process as a client loads it; its modules removed after."""
    saved = {name: sys.modules.pop(name) for name in DIGITS_MODULES if name in sys.modules}
    path = list(sys.path)
    try:
        yield Project.load(DIGITS)
    finally:
        sys.path[:] = path
        for name in DIGITS_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.mark.timeout(90)
def test_the_pool_trains_digits_exactly_as_in_process_training(digits_in_process: Project, tmp_path: Path) -> None:
    sys.path.insert(0, str(DIGITS))
    importlib.import_module("seed").make_seed(str(tmp_path / "seed"))
    ctx = context(tmp_path)
    with WorkerPool(DIGITS, 1) as pool:
        pooled = pool.run("train", tmp_path / "seed", tmp_path / "pooled", ctx)
        pooled_metrics = pool.run("validate", tmp_path / "pooled", tmp_path / "m1", ctx)
        assert os.getpid() not in pool.pids() and len(pool.pids()) == 1
    local = digits_in_process.train(tmp_path / "seed", tmp_path / "local", ctx)
    local_metrics = digits_in_process.validate(tmp_path / "local", tmp_path / "m2", ctx)
    # the project seeds its shuffle from (round, client) and runs on one thread: deterministic
    assert pooled == local and pooled["num_examples"] > 0 and pooled["round"] == 2
    digest = [hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("pooled", "local")]
    assert digest[0] == digest[1]
    assert pooled_metrics == local_metrics and pooled_metrics["accuracy"] > 0.5


@pytest.mark.timeout(60)
def test_tasks_run_in_the_workers_with_their_cpu_share(tmp_path: Path) -> None:
    project = probe_project(tmp_path / "probe")
    with WorkerPool(project, 2, threads=3) as pool:
        pool.start()
        workers = pool.pids()
        assert len(workers) == 2 and os.getpid() not in workers
        results: list[dict] = []
        tasks = [threading.Thread(target=lambda k=k: results.append(pool.run(
            "train", project / "in.model", tmp_path / f"out{k}", context(tmp_path, sleep=0.5)))) for k in range(2)]
        for task in tasks:
            task.start()
        for task in tasks:
            task.join(30)
        # two tasks at once: one in each worker, each told its CPU share before the project loaded
        assert sorted(r["pid"] for r in results) == workers
        assert [r["omp"] for r in results] == ["3", "3"]
        assert (tmp_path / "out0").read_bytes() == b"model"
        assert pool.run("validate", project / "in.model", tmp_path / "v", context(tmp_path))["pid"] in workers
        assert pool.rss_bytes() > 1 << 20
    assert all(wait_until(lambda: gone(pid), 10, f"worker {pid} to exit") for pid in workers)


@pytest.mark.timeout(60)
def test_a_worker_that_dies_fails_its_task_only_and_is_replaced(tmp_path: Path) -> None:
    project = probe_project(tmp_path / "probe")
    with WorkerPool(project, 1) as pool:
        pool.start()
        (first,) = pool.pids()
        outcome: dict[str, BaseException] = {}

        def doomed() -> None:
            try:
                pool.run("train", project / "in.model", tmp_path / "doomed", context(tmp_path, sleep=60))
            except BaseException as exc:  # noqa: BLE001 - the test reads it
                outcome["error"] = exc

        task = threading.Thread(target=doomed)
        task.start()
        wait_until(lambda: (tmp_path / "doomed.started").exists(), 20, "the task to start in the worker")
        os.kill(first, signal.SIGKILL)  # the OOM killer's way
        task.join(20)
        error = outcome["error"]
        assert isinstance(error, ProjectError) and f"worker (pid {first}) died while running it" in str(error)

        after = pool.run("train", project / "in.model", tmp_path / "next", context(tmp_path))
        assert after["pid"] != first and pool.pids() == [after["pid"]]
        # a worker that dies while idle costs no task: the next one gets a new worker
        os.kill(after["pid"], signal.SIGKILL)
        wait_until(lambda: gone(after["pid"]), 10, "the idle worker to die")
        again = pool.run("train", project / "in.model", tmp_path / "again", context(tmp_path))
        assert again["pid"] not in (first, after["pid"])


@pytest.mark.timeout(60)
def test_a_task_over_the_projects_timeout_fails_and_its_worker_is_replaced(tmp_path: Path) -> None:
    project = probe_project(tmp_path / "probe", task_timeout=1)
    with WorkerPool(project, 1) as pool:
        pool.start()
        (first,) = pool.pids()
        started = time.monotonic()
        with pytest.raises(ProjectError, match=r"train did not finish within 1s \(the project's task_timeout\)"):
            pool.run("train", project / "in.model", tmp_path / "slow", context(tmp_path, sleep=60))
        assert time.monotonic() - started < 10
        wait_until(lambda: gone(first), 10, "the overrunning worker to be stopped")
        assert pool.run("train", project / "in.model", tmp_path / "next", context(tmp_path))["pid"] != first


def test_a_project_the_workers_cannot_load_is_refused_at_start(tmp_path: Path) -> None:
    project = probe_project(tmp_path / "broken", module="import not_a_module_anywhere\n")
    pool = WorkerPool(project, 1)
    with pytest.raises(ProjectError, match="could not load the project.*not_a_module_anywhere"):
        pool.start()
    assert pool.pids() == []
    pool.close()
    with pytest.raises(ValueError, match="from 0 to 256"):
        WorkerPool(project, 257)
    with pytest.raises(ValueError, match="threads must be an integer from 1 to 64"):
        WorkerPool(project, 1, threads=0)


KILLED_PARENT = '''
import sys
from fedtier.client.pool import WorkerPool

if __name__ == "__main__":
    pool = WorkerPool(sys.argv[1], 2)
    pool.start()
    print(" ".join(map(str, pool.pids())), flush=True)
    sys.stdin.read()  # until killed
'''


@pytest.mark.timeout(60)
def test_workers_exit_when_their_swarm_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives the pool no chance to close: the workers notice their parent is gone."""
    project = probe_project(tmp_path / "probe")
    (tmp_path / "parent.py").write_text(KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(project)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(not gone(pid) for pid in workers)
        parent.kill()
        parent.wait(10)
        for pid in workers:
            wait_until(lambda: gone(pid), 10, f"worker {pid} to exit after its parent was killed")
    finally:
        parent.kill()


@pytest.mark.timeout(120)
def test_a_swarm_with_workers_trains_digits_without_torch_and_leaves_no_process(procs: ProcessGroup,
                                                                                 tmp_path: Path) -> None:
    """A real `fedtier swarm --workers 1` against a combiner: a digits round gets every update; the
    swarm process never maps libtorch (its worker does); SIGTERM leaves none of its children."""
    seed = ROOT / "seeds" / "digits.safetensors"  # test_seeds.py checks digits/seed.py writes exactly it
    server = CombinerServer(CombinerSettings(name="c", host="127.0.0.1", port=0, work_dir=tmp_path / "combiner",
                                             heartbeat_interval=0.5, heartbeat_timeout=10.0))
    port = server.start()
    handle = CombinerClient(f"127.0.0.1:{port}")
    try:
        handle.upload_model(seed, "seed")
        stats = tmp_path / "stats.json"
        swarm = procs.start("swarm", "swarm", "--clients", "3", "--combiner", f"127.0.0.1:{port}", "--project",
                            str(DIGITS), "--name-prefix", "p", "--work-dir", str(tmp_path / "swarm"), "--workers",
                            "1", "--stats", str(stats), "--stats-interval", "0.2", "--start-interval", "0")
        wait_until(lambda: len(server.registry.active_names()) == 3 or swarm.poll() is not None, 60, "3 clients")
        assert swarm.poll() is None, procs.log("swarm")
        config = {"clients_required": 3, "round_timeout": 60, "wait_for_clients": 30, "helper": "pytorch"}
        result = handle.start_round(pb.RoundRequest(session_id="s", round_id=uuid.uuid4().hex, kind=pb.TRAINING,
                                                    model_id="seed", config_json=json.dumps(config)), timeout=90)
        assert result.success, (result.error, list(result.failures))
        assert sorted(u.client_name for u in result.updates) == ["p-0", "p-1", "p-2"]

        children = psutil.Process(swarm.pid).children(recursive=True)
        assert len(children) >= 1, children
        torch_in = [p.pid for p in children + [psutil.Process(swarm.pid)] if "libtorch" in maps(p.pid)]
        assert torch_in and swarm.pid not in torch_in  # the worker trained with torch; the swarm never loaded it
        totals = wait_until(lambda: stats.exists() and (t := json.loads(stats.read_text())["totals"])["train"] == 3
                            and t, 20, "the stats to count 3 tasks")
        assert totals["worker_rss_bytes"] > 50 << 20 and totals["rss_bytes"] > 10 << 20, totals
        assert totals["worker_rss_bytes"] > totals["rss_bytes"], totals  # torch is in the worker

        swarm.send_signal(signal.SIGTERM)
        assert swarm.wait(30) == 0, procs.log("swarm")
        for child in children:  # the worker, and multiprocessing's resource tracker
            wait_until(lambda: gone(child.pid), 10, f"child {child.pid} to exit with the swarm")
    finally:
        handle.close()
        server.stop(0)


def maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""
