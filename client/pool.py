"""Worker processes that run virtual clients' training tasks, so a swarm never loads the framework.

A swarm's virtual clients (client/swarm.py) spend most of their life idle: connected,
heartbeating, waiting to be picked for a round. Training in the client's own thread makes
the swarm process import the project's framework (torch: hundreds of MiB, the same in a
swarm of 10 clients or of 2,000) and run every task under the swarm's one GIL. With a
pool, the swarm process holds connections only; ``workers`` processes each load the
project once and run the ``train``/``validate`` calls of whichever clients a round picks,
each with a CPU share of ``threads``. A swarm's memory then grows with its workers, not
with its idle clients, and training runs on as many cores as there are workers.

How it is built, and why:

* Processes are started with ``spawn``, a fresh interpreter each, never ``fork``: the
  swarm process holds gRPC's threads and their locks, and a forked child would inherit
  them in whatever state they were in. (``forkserver`` would do as well; the start cost is
  the project's imports either way, and spawn behaves the same on every platform.)
* One ``ProcessPoolExecutor`` of one process per worker, not one executor of N: when a
  process of an executor dies, every task in flight in that executor fails
  (BrokenProcessPool). With one per worker, a worker that dies (killed, out of memory, a
  crash in native code) fails the one task it ran; its slot gets a new worker for the next
  task. A worker found dead before it is given a task costs no task.
* A task running longer than the project's ``task_timeout`` (fedn.yaml) fails with
  ProjectError; its worker is killed (the only way to stop Python code mid-call) and
  replaced. A ``command:`` entry point keeps its own timeout inside the worker, which
  fires first, with its own message.
* Each worker sets its CPU share before the project's imports (``OMP_NUM_THREADS`` and
  friends, read by OpenMP/BLAS when they load) and after them (``torch.set_num_threads``
  if the project imported torch, threadpoolctl for whatever BLAS/OpenMP is loaded).
* Nothing is left behind: ``close()`` stops the workers (killing any that outlive its
  timeout), and a worker whose parent vanished without closing it (SIGKILL) exits by
  itself within a second (it watches its parent's pid).

Task arguments and results travel between the swarm and its workers by pickle (what
``concurrent.futures`` uses): the TaskContext, paths, the metadata dict. Both ends are
this code, in processes of the same user on the same machine, never input from the
network; the task's settings inside the context came from the combiner as JSON and were
parsed before they were put in it. A project exception that would not survive the trip
back (unpicklable) is turned into a ProjectError with its text.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtier.memory import process_rss_bytes

if TYPE_CHECKING:  # imported when used: importing this module (the CLI's bounds) stays cheap
    from fedtier.client.context import TaskContext
    from fedtier.client.project import Project

log = logging.getLogger(__name__)

MAX_WORKERS = 256        # processes per swarm: beyond this, run more swarms (on more machines)
MAX_WORKER_THREADS = 64  # CPU threads per worker
START_TIMEOUT = 600.0    # seconds for a worker to start and load the project (imports, datasets)
COMMAND_GRACE = 5.0      # a command entry point's own timeout (inside the worker) fires first
PARENT_CHECK_S = 1.0     # how often a worker checks that its swarm is still there
#: read by OpenMP and the BLAS libraries when they load: set in a worker before the project's imports
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")
TASK_KINDS = ("train", "validate")


def check_pool_size(workers: int, threads: int) -> None:
    """ValueError naming the bound when ``workers`` or ``threads`` is outside it (0 workers: no pool)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be an integer from 0 to {MAX_WORKERS}, got {workers!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_WORKER_THREADS:
        raise ValueError(f"worker threads must be an integer from 1 to {MAX_WORKER_THREADS}, got {threads!r}")


# ---------------------------------------------------------------- in the worker process
_project: Project | None = None
_load_error = ""


def _init_worker(root: str, threads: int, parent: int, log_level: int) -> None:
    """Load the project once for every task this worker will run, with its CPU share set.

    A failure is kept, not raised: an initializer that raises only ends the process, and
    the pool could then say no more than "a worker died". Every call then reports it."""
    global _project, _load_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the swarm stops us
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [pool-worker {os.getpid()}] %(message)s")
    threading.Thread(target=_watch_parent, args=(parent,), name="pool-watch-parent", daemon=True).start()
    from fedtier.client.project import Project

    try:
        project = Project.load(root)
        project.warm_up()
    except Exception as exc:  # the project's code, whatever it raises
        _load_error = f"{type(exc).__name__}: {exc}"
        return
    _limit_threads(threads)
    _project = project


def _limit_threads(threads: int) -> None:
    torch = sys.modules.get("torch")  # only if the project uses it: importing it here would cost its memory
    if torch is not None:
        torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # BLAS/OpenMP loaded by now; stays in force (not used as a context)


def _watch_parent(parent: int) -> None:
    """Exit when the swarm is gone: a killed swarm never closes its pool, and an orphan would idle forever."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)


def _ping() -> int:
    """The worker's pid, once it has loaded the project (ProjectError if it could not)."""
    _loaded()
    return os.getpid()


def _loaded() -> Project:
    if _project is None:
        from fedtier.client.project import ProjectError

        raise ProjectError(f"a pool worker could not load the project: {_load_error}")
    return _project


def _run_task(kind: str, in_model: str, out: str, ctx: TaskContext) -> tuple[dict[str, Any], float]:
    """The task's result and the seconds its code ran here (not the wait for a free worker)."""
    from fedtier.client.project import ProjectError
    from fedtier.memory import release_free_memory

    project = _loaded()
    try:
        call = project.train if kind == "train" else project.validate
        started = time.perf_counter()
        result = call(Path(in_model), Path(out), ctx)
        return result, time.perf_counter() - started
    except Exception as exc:  # the project's code: send it back as it is, if it survives the trip
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            raise ProjectError(f"{kind} failed: {type(exc).__name__}: {exc}") from None
        raise
    finally:
        release_free_memory()  # between tasks, hold only what is live (fedtier/memory.py)


# ---------------------------------------------------------------- in the swarm process
@dataclass(eq=False)
class _Worker:
    executor: ProcessPoolExecutor
    pid: int


class WorkerPool:
    """``workers`` processes, each with the project at ``project_root`` loaded, running any client's tasks.

    ``run`` blocks until a worker is free; the swarm's task slots bound how many wait.
    Workers start at ``start()`` (PooledProject.warm_up), or at the first task.
    """

    def __init__(self, project_root: str | os.PathLike, workers: int, threads: int = 1) -> None:
        from fedtier.client.project import Project

        check_pool_size(workers, threads)
        if workers < 1:
            raise ValueError("a worker pool needs at least 1 worker (0 workers means no pool)")
        self.project = Project.load(project_root)  # reads fedn.yaml only: nothing of the project's code here
        self.root = self.project.root
        self.workers = workers
        self.threads = threads
        self._compute = threading.local()  # each client thread's last task's time in its worker
        self.start_timeout = START_TIMEOUT
        commands = any(e.command for e in self.project.entry_points.values())
        self.task_timeout = self.project.task_timeout + (COMMAND_GRACE if commands else 0.0)
        self._context = get_context("spawn")
        self._cond = threading.Condition()
        self._idle: list[_Worker | None] = []  # None: a slot whose worker is to be (re)started
        self._live: set[_Worker] = set()
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False

    # ---- workers
    def _spawn(self) -> tuple[ProcessPoolExecutor, Future]:
        executor = ProcessPoolExecutor(1, mp_context=self._context, initializer=_init_worker,
                                       initargs=(str(self.root), self.threads, os.getpid(),
                                                 logging.getLogger().getEffectiveLevel()))
        return executor, executor.submit(_ping)

    def _ready(self, executor: ProcessPoolExecutor, ping: Future) -> _Worker:
        """The worker once it has loaded the project; ProjectError saying why it did not."""
        from fedtier.client.project import ProjectError

        try:
            worker = _Worker(executor, ping.result(timeout=self.start_timeout))
        except FutureTimeout:
            _kill_executor(executor)
            raise ProjectError(f"a pool worker did not load the project {self.root.name} within "
                               f"{self.start_timeout:g}s") from None
        except BrokenProcessPool:
            executor.shutdown(wait=False, cancel_futures=True)
            raise ProjectError("a pool worker exited while starting (its output is in this process's log)") from None
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        with self._cond:
            closed = self._closed
            if not closed:
                self._live.add(worker)
        if closed:  # close() ran while this worker started: it must not outlive the pool
            _kill_pid(worker.pid)
            executor.shutdown(wait=False, cancel_futures=True)
            raise ProjectError("the worker pool is closed (the swarm is stopping)")
        return worker

    def start(self) -> None:
        """Start every worker and wait until each has loaded the project (in parallel); once.

        ProjectError if one could not (they are all stopped then): a swarm refuses to start
        rather than fail every task later."""
        with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("this worker pool is closed")
            began = time.monotonic()
            spawned = [self._spawn() for _ in range(self.workers)]
            ready: list[_Worker] = []
            try:
                for executor, ping in spawned:
                    ready.append(self._ready(executor, ping))
            except BaseException:
                for executor, _ in spawned:
                    _kill_executor(executor)
                with self._cond:
                    self._live.clear()
                raise
            with self._cond:
                self._idle.extend(ready)
                self._cond.notify_all()
            self._started = True
        log.info("worker pool: %d workers (%d CPU threads each, %s cores here) loaded %s in %.1fs",
                 self.workers, self.threads, os.cpu_count(), self.root.name, time.monotonic() - began)

    def _take(self) -> _Worker:
        from fedtier.client.project import ProjectError

        with self._cond:
            while not self._idle and not self._closed:
                self._cond.wait()
            if self._closed:
                raise ProjectError("the worker pool is closed (the swarm is stopping)")
            worker = self._idle.pop()
        if worker is None:
            try:
                worker = self._ready(*self._spawn())
            except BaseException:
                self._give_back(None)
                raise
        return worker

    def _give_back(self, worker: _Worker | None) -> None:
        with self._cond:
            if self._closed:
                if worker is not None:
                    worker.executor.shutdown(wait=False, cancel_futures=True)
                return
            self._idle.append(worker)
            self._cond.notify()

    def _discard(self, worker: _Worker, kill: bool) -> None:
        """Stop a worker that died or overran; its slot gets a new one for the next task."""
        with self._cond:
            self._live.discard(worker)
        if kill:
            _kill_pid(worker.pid)
        worker.executor.shutdown(wait=False, cancel_futures=True)

    # ---- tasks
    def run(self, kind: str, in_model: str | os.PathLike, out: str | os.PathLike, ctx: TaskContext,
            timeout: float | None = None) -> dict[str, Any]:
        """Run the project's ``train`` (metadata) or ``validate`` (metrics) in a free worker,
        within ``timeout`` seconds (default: the project's task_timeout)."""
        from fedtier.client.project import ProjectError

        if kind not in TASK_KINDS:
            raise ValueError(f"a pool task is one of {', '.join(TASK_KINDS)}, got {kind!r}")
        self.start()
        worker: _Worker | None = self._take()
        args = (_run_task, kind, str(in_model), str(out), ctx)
        try:
            try:
                if not _alive(worker.pid):  # before its executor may have noticed
                    raise BrokenProcessPool(f"worker {worker.pid} exited")
                future = worker.executor.submit(*args)
            except BrokenProcessPool:  # it died while idle: no task lost, start a new one for this task
                self._discard(worker, kill=False)
                worker = None
                worker = self._ready(*self._spawn())
                future = worker.executor.submit(*args)
            try:
                result, self._compute.seconds = future.result(timeout=timeout or self.task_timeout)
                return result
            except FutureTimeout:
                self._discard(worker, kill=True)
                pid, worker = worker.pid, None
                limit = f"{timeout:g}s" if timeout else f"{self.project.task_timeout:g}s (the project's task_timeout)"
                raise ProjectError(f"{kind} did not finish within {limit}; its worker (pid {pid}) was stopped and "
                                   f"is replaced") from None
            except BrokenProcessPool:
                self._discard(worker, kill=False)
                pid, worker = worker.pid, None
                raise ProjectError(f"{kind} failed: its pool worker (pid {pid}) died while running it (killed, out "
                                   f"of memory, or a crash in native code); a new worker replaces it") from None
        finally:
            self._give_back(worker)

    def compute_seconds(self) -> float | None:
        """Seconds the calling thread's last task ran in its worker (None before any)."""
        return getattr(self._compute, "seconds", None)

    # ---- the swarm's view
    def pids(self) -> list[int]:
        """The pids of the workers running now."""
        with self._cond:
            return sorted(w.pid for w in self._live)

    def rss_bytes(self) -> int:
        """Resident memory of the workers together (those that could be read)."""
        return sum(process_rss_bytes(pid) or 0 for pid in self.pids())

    def close(self, timeout: float = 10.0) -> None:
        """Stop every worker: each finishes the task it runs, for up to ``timeout`` seconds, then is killed.

        Tasks waiting for a worker fail with ProjectError. Returns once every worker has exited."""
        with self._cond:
            self._closed = True
            workers = list(self._live)
            self._live.clear()
            self._idle.clear()
            self._cond.notify_all()
        stoppers = [threading.Thread(target=w.executor.shutdown, kwargs={"cancel_futures": True},
                                     name=f"pool-stop-{w.pid}", daemon=True) for w in workers]
        for thread in stoppers:
            thread.start()
        deadline = time.monotonic() + timeout
        for worker, thread in zip(workers, stoppers):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("worker pool: worker %d still busy after %gs: killed", worker.pid, timeout)
                _kill_pid(worker.pid)
                thread.join(10)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    """False once the process has exited (exited but not yet reaped counts); True where this cannot be told."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return not os.path.isdir("/proc")  # no such process, or no /proc on this platform
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_executor(executor: ProcessPoolExecutor) -> None:
    """Kill an executor's process before its pid is known (a worker stuck loading the project).

    ``_processes`` is the executor's own table of its processes (there is no public way
    before Python 3.14's ``kill_workers``)."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.kill()
    executor.shutdown(wait=False, cancel_futures=True)


class PooledProject:
    """What FedClient uses of a Project, with ``train`` and ``validate`` run in a WorkerPool.

    A FedClient given one runs unchanged; nothing here imports the project's code, so a
    swarm holding only PooledProjects never loads the framework its project trains with."""

    def __init__(self, project: Project, pool: WorkerPool) -> None:
        self.project = project
        self.pool = pool

    @property
    def root(self) -> Path:
        return self.project.root

    @property
    def helper(self) -> str:
        return self.project.helper

    @property
    def labels(self) -> str | None:
        return self.project.labels

    @property
    def entry_points(self) -> dict[str, Any]:
        return self.project.entry_points

    @property
    def task_timeout(self) -> float:
        return self.project.task_timeout

    def warm_up(self) -> None:
        """Start the workers (each imports the project's code); cheap once they run, as every client calls it."""
        self.pool.start()

    def train(self, in_model: Path, out_model: Path, ctx: TaskContext) -> dict[str, Any]:
        return self.pool.run("train", in_model, out_model, ctx)

    def compute_seconds(self) -> float | None:
        """How long the last task of the calling thread (one client's) ran in its worker: a
        slow client's conditions stretch that, not the time it queued for a free worker."""
        return self.pool.compute_seconds()

    def validate(self, in_model: Path, out_json: Path, ctx: TaskContext) -> dict[str, Any]:
        return self.pool.run("validate", in_model, out_json, ctx)

    def close(self) -> None:
        self.pool.close()
