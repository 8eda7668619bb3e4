"""Many clients in one process: a swarm of virtual clients for load tests.

    fedtier swarm --clients 50 --reducer http://127.0.0.1:8090 --project bench/projects/noop \\
        --name-prefix s0 [--partition-count 200 --partition-offset 0] [--stats stats.json]

Each virtual client is a real :class:`FedClient` with its own name, work directory,
gRPC channel and task stream, so a combiner cannot tell it from a client on a machine of its
own. The clients share what one interpreter would not load twice: the project (its entry
points imported once), and one event loop: a client's connection, task stream and heartbeats
are coroutines on it (``run_clients``), so an idle client holds no thread and one process
holds thousands. A task runs in a thread of its own while it lasts.

Task slots: the clients of one process share one GIL. When all of them run a task at
once (download, train, upload: Python code throughout), hundreds of threads draw lots for
the GIL every 5 ms and the loop that serves every client's stream and heartbeats waits its
turn like any of them (measured with 200 threaded clients in one process on 2 cores:
heartbeat gaps up to 17 s). Running 200 tasks "at once" in one interpreter is no faster
than running a few at a time, so a swarm runs at most ``task_slots`` tasks at once
(default 8; the others wait for a slot with their task in hand). A task that only waits
(the lab's slow, thin or distant clients) gives its slot back meanwhile. ``task_slots=0``
lifts the limit.

Worker pool: with ``workers`` > 0 the clients' train and validate calls run in that many
worker processes (client/pool.py), each with the project loaded and ``worker_threads`` CPU
threads; this process then never imports the project's framework, so an idle client costs
only its connection and threads. A task holds its slot while it downloads, waits for a
worker, trains there and uploads, so the default slots are then ``max(8, 2 x workers)``:
while one task of a worker trains, another has its model downloaded and ready (or its
result uploading), and the pool is never starved by transfers.

Connections: gRPC lets channels of one process with the same target and options share
one TCP connection. Separate machines do not, so ``fedtier swarm`` (which runs nothing
but clients) gives every channel its own connection; see :func:`own_connections`.

Use an in-process (``python:``) project: a ``command:`` entry point starts one
interpreter per task, which is what a swarm exists to avoid.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from fedtier.client.client import ClientSettings, FedClient, run_clients
from fedtier.client.conditions import Conditions, ConditionsError
from fedtier.client.pool import PooledProject, WorkerPool, check_pool_size
from fedtier.client.project import Project
from fedtier.identity import own_credential
from fedtier.memory import process_rss_bytes

log = logging.getLogger(__name__)

MAX_CLIENTS = 10_000  # one loop serves them all; beyond this, run more swarm processes
MAX_CONDITIONS_BYTES = 256 << 20  # a --conditions file: 10,000 clients with long on/off traces fit
TASK_SLOTS = 8
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


def own_connections() -> None:
    """From now on every gRPC channel this process opens gets a TCP connection of its own.

    gRPC's default (a process-wide subchannel pool) would put all of a swarm's clients of
    one combiner on one connection, sharing its HTTP/2 flow control and keepalive: not
    what separate clients do. This changes the options ``make_channel`` uses for the
    whole process, so call it only in a process that runs nothing but clients.
    """
    from fedtier.transport import channel

    if OWN_CONNECTION not in channel.CHANNEL_OPTIONS:
        channel.CHANNEL_OPTIONS.append(OWN_CONNECTION)


class Swarm:
    """``count`` clients named ``<name_prefix>-<k>``, k = 0..count-1.

    Client k uses partition ``(partition_offset + k) % partition_count`` (default: count),
    so several swarms can share out one dataset. The clients start ``start_interval``
    seconds apart: a real network's clients do not all arrive in the same millisecond,
    and spreading the starts spreads their heartbeats too.
    """

    def __init__(self, count: int, name_prefix: str = "swarm", *, project: Project | str | os.PathLike,
                 reducer_url: str | None = None, combiner: str | None = None,
                 work_dir: str | os.PathLike = "var/swarm", data_path: str | None = None,
                 partition_count: int | None = None, partition_offset: int = 0,
                 task_slots: int | None = None, token: str = "", tls_ca: str = "", credentials_dir: str = "",
                 start_interval: float = 0.01, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 conditions: Sequence[Conditions | None] | None = None, workers: int = 0,
                 worker_threads: int = 1) -> None:
        if not 1 <= count <= MAX_CLIENTS:
            raise ValueError(f"a swarm runs 1 to {MAX_CLIENTS} clients, got {count}")
        if bool(reducer_url) == bool(combiner):
            raise ValueError("give a swarm exactly one of a reducer URL or a combiner address")
        partitions = partition_count or count
        check_pool_size(workers, worker_threads)
        if task_slots is None:  # the module's docstring says why a pool wants more
            task_slots = max(TASK_SLOTS, 2 * workers)
        if partitions < 1 or partition_offset < 0 or task_slots < 0:
            raise ValueError("partition_count must be positive, partition_offset and task_slots not negative")
        if conditions is not None and len(conditions) != count:
            raise ValueError(f"conditions: one entry per client ({count}), got {len(conditions)}")
        per_client = list(conditions) if conditions is not None else [None] * count
        self.project = project if isinstance(project, Project) else Project.load(project)
        # with workers, tasks run in the pool's processes: nothing here imports the project's code
        self.pool = WorkerPool(self.project.root, workers, worker_threads) if workers else None
        if self.pool is not None:
            self.project = PooledProject(self.project, self.pool)  # type: ignore[assignment]
        self.start_interval = max(0.0, start_interval)
        self.work_dir = Path(work_dir)
        self.task_slots = task_slots
        self.clients: list[FedClient] = [
            FedClient(ClientSettings(
                name=f"{name_prefix}-{k}", project=self.project.root, combiner=combiner, reducer_url=reducer_url,
                data_path=data_path, partition_index=(partition_offset + k) % partitions,
                num_partitions=partitions, work_dir=self.work_dir / f"{name_prefix}-{k}",
                # each client presents its own credential (a credential names one client)
                token=own_credential("", credentials_dir, f"{name_prefix}-{k}") if credentials_dir else token,
                tls_ca=tls_ca, backoff_initial=backoff_initial, backoff_max=backoff_max, conditions=per_client[k]),
                project=self.project)
            for k in range(count)]
        summary = summarize_conditions(per_client)
        if summary:
            log.warning("swarm %s: lab conditions: %s", name_prefix, summary)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self.base_rss_bytes: int | None = None  # set by start()

    @property
    def names(self) -> list[str]:
        return [c.settings.name for c in self.clients]

    def start(self, wait: bool = True) -> None:
        """Start every client: returns once all of them are started, or at once with ``wait=False``."""
        if self._loop_thread is not None:
            raise RuntimeError("this swarm was already started")
        self.project.warm_up()  # once, here, not raced by every client (with a pool: its workers)
        self.base_rss_bytes = process_rss_bytes()  # before any client: what the clients add is the rest
        self._loop_thread = threading.Thread(target=self._serve, name="swarm-loop", daemon=True)
        self._loop_thread.start()
        if wait:
            self._started.wait()

    def _serve(self) -> None:
        try:
            run_clients(self.clients, self._stop, self.task_slots, self.start_interval, self._started)
        except Exception:  # logged here: the thread's end is what stop() and running() see
            log.exception("swarm: its event loop ended with an error")
        finally:
            self._started.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop every client and wait for them; True when all of them ended in time.

        Each client's task stream is ended at once; a task in progress is finished first.
        """
        self._stop.set()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout)
        for client in self.clients:
            client.close()
        if self.pool is not None:
            self.pool.close()  # after the clients: a task in progress was finished first
        alive = [c.settings.name for c in self.clients if c.running]
        if alive:
            log.warning("swarm: %d clients still running after %gs: %s", len(alive), timeout, ", ".join(alive[:10]))
        return not alive

    def running(self) -> int:
        return sum(1 for c in self.clients if c.running)

    # ---- what the clients did
    def stats(self) -> dict[str, dict[str, int]]:
        """Per client: connects (1 means it never had to reconnect), tasks done, and what its
        lab conditions made it do (dropouts, crashes, offline periods)."""
        return {c.settings.name: {"connects": c.stats.connects, **c.stats.tasks_done, "dropouts": c.stats.dropouts,
                                  "crashes": c.stats.crashes, "offline_periods": c.stats.offline_periods}
                for c in self.clients}

    def totals(self, stats: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
        """Sums over the clients (``stats`` when the caller has just read them), and this
        process's memory: ``rss_bytes`` (this process), ``base_rss_bytes`` (this process before
        its clients started: the difference is what the clients cost) and ``worker_rss_bytes``
        (its pool's workers together, 0 without a pool); None where unreadable."""
        per_client = list((stats if stats is not None else self.stats()).values())
        out = {key: sum(s[key] for s in per_client)
               for key in ("connects", "train", "validate", "failed", "dropouts", "crashes", "offline_periods")}
        out.update(clients=len(self.clients), connected=sum(1 for s in per_client if s["connects"] > 0),
                   reconnected=sum(1 for s in per_client if s["connects"] > 1), running=self.running(),
                   threads=threading.active_count())
        out.update(rss_bytes=process_rss_bytes(), worker_rss_bytes=self.pool.rss_bytes() if self.pool else 0,
                   base_rss_bytes=self.base_rss_bytes)
        return out

    def write_stats(self, path: str | os.PathLike) -> dict[str, Any]:
        """The stats as JSON, replaced atomically so a reader never sees half a file; returns
        the totals written (each client read once: a swarm holds thousands)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        stats = self.stats()
        totals = self.totals(stats)
        tmp.write_text(json.dumps({"time": time.time(), "totals": totals, "clients": stats}, separators=(",", ":")))
        os.replace(tmp, path)
        return totals


def summarize_conditions(conditions: Sequence[Conditions | None]) -> str:
    """One line for a log: how many clients run under which non-default conditions, per kind."""
    kinds: dict[str, int] = {}
    for c in conditions:
        if c is not None and c.changes():
            kinds[c.describe()] = kinds.get(c.describe(), 0) + 1
    if not kinds:
        return ""
    shown = sorted(kinds.items(), key=lambda kv: -kv[1])
    text = "; ".join(f"{n} x {{{what}}}" for what, n in shown[:10])
    return f"{sum(kinds.values())} of {len(conditions)} clients: {text}" + (
        f"; and {len(shown) - 10} more kinds" if len(shown) > 10 else "")


def load_conditions(path: str | os.PathLike, count: int) -> list[Conditions | None]:
    """``fedtier swarm --conditions FILE``: ``{"clients": [<conditions of client k> or null, ...]}``
    with exactly ``count`` entries; a bad entry is named (``clients[7].speed``)."""
    from fedtier.strict_json import loads

    path = Path(path)
    if path.stat().st_size > MAX_CONDITIONS_BYTES:
        raise ConditionsError(str(path), f"over {MAX_CONDITIONS_BYTES} bytes")
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConditionsError(str(path), str(exc)) from None
    if not isinstance(data, dict) or set(data) != {"clients"} or not isinstance(data["clients"], list):
        raise ConditionsError(str(path), 'must be a JSON object {"clients": [...]} with one entry per client')
    entries = data["clients"]
    if len(entries) != count:
        raise ConditionsError("clients", f"must have exactly --clients ({count}) entries, got {len(entries)}")
    return [None if entry is None else Conditions.from_dict(entry, f"clients[{k}]") for k, entry in enumerate(entries)]


def run_swarm(args: Any, settings: Any, stop: threading.Event) -> int:
    """``fedtier swarm``: start the swarm, report now and then, stop on SIGINT/SIGTERM."""
    conditions = load_conditions(args.conditions, args.clients) if getattr(args, "conditions", "") else None
    own_connections()
    prefix = args.name_prefix or f"{settings.client_name_base}-swarm"
    swarm = Swarm(args.clients, prefix, project=Path(args.project), reducer_url=args.reducer or None,
                  combiner=args.combiner or None,
                  work_dir=Path(args.work_dir or settings.data_dir / "swarms" / prefix),
                  data_path=args.data_path or None, partition_count=args.partition_count or None,
                  partition_offset=args.partition_offset, task_slots=args.task_slots, token=settings.auth_token,
                  tls_ca=settings.tls_ca, credentials_dir=settings.credentials_dir, start_interval=args.start_interval,
                  conditions=conditions, workers=args.workers, worker_threads=args.worker_threads)
    swarm.start(wait=False)
    last: dict[str, int] = {}
    while not stop.wait(max(0.2, args.stats_interval)):
        totals = swarm.write_stats(args.stats) if args.stats else swarm.totals()
        shown = ("connected", "reconnected", "train", "validate", "failed") + (
            ("dropouts", "crashes", "offline_periods") if conditions else ())
        now = {k: totals[k] for k in shown}
        if now != last:
            log.info("swarm %s: %s", prefix, " ".join(f"{k}={v}" for k, v in now.items()))
            last = now
    ended = swarm.stop()
    if args.stats:
        swarm.write_stats(args.stats)
    return 0 if ended else 1
