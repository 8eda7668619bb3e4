"""A federated client: connects out to a combiner, takes tasks, runs the project's code.

The client opens no port. It finds its combiner (given, or assigned by the reducer's
``/assign``), connects, and reads tasks from one long-lived stream; while that stream
is open the combiner counts it active (combiner/registry.py). It also heartbeats, as
often as the combiner says: a fallback that tells it when the combiner has forgotten
it. When the combiner goes away the stream (its keepalive pings) or the heartbeats
fail; the client then backs off exponentially, asks for a combiner again, and resumes
taking tasks when one answers.

The connection is asyncio (grpc.aio): ``serve`` is a coroutine, so one process can run
thousands of clients on one loop (client/swarm.py) and a lone client (``run``) is the same
code on a loop of its own. A task is blocking work (the project's code, files, the lab's
paced transfers) and runs in a thread of its own, calling the combiner through
client/blocking.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc
import requests

from fedtier import __version__, limits
from fedtier.client.attack import Attack
from fedtier.client.conditions import Conditions, Throttle, data_bytes, throttled
from fedtier.client.context import TaskContext
from fedtier.client.package import PackageUnavailable, fetch_package
from fedtier.client.personal import PersonalLayers, with_personal
from fedtier.client.project import Project
from fedtier.ids import check_model_id
from fedtier.memory import release_free_memory
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.client.blocking import BlockingStub, BlockingTransfer, LoopCalls
from fedtier.transport.channel import make_aio_channel, token_metadata
from fedtier.transport.streams import CHUNK_SIZE, file_chunks, receive_to_file
from fedtier.transport.wire import ModelTransferStub

log = logging.getLogger(__name__)


#: seconds without any answer to its heartbeats before a client leaves a combiner that still holds its stream
SILENT_COMBINER_S = 60.0
#: the longest heartbeat interval a combiner may ask for (its answer is an outside party's number)
MAX_HEARTBEAT_INTERVAL_S = 600.0


class DiscoveryError(ConnectionError):
    """The reducer did not assign a combiner (not reachable, or none registered yet)."""


@dataclass(frozen=True)
class ClientSettings:
    name: str
    project: Path | None = None      # a local project; without one, the reducer's compute package
    combiner: str | None = None      # HOST:PORT; when unset, ask the reducer
    reducer_url: str | None = None
    data_path: str | None = None
    partition_index: int = 0
    num_partitions: int = 1
    work_dir: Path = Path("var/client")
    token: str = ""                  # FEDN_ALLIANCE_AUTH_TOKEN
    tls_ca: str = ""                 # CA certificate to verify the combiner and reducer with
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    models_kept: int = 3             # downloaded models cached on disk
    package_sha256: str = ""         # run only the compute package with this checksum
    attack: Attack | None = None     # a lab attack (client/attack.py): never in a deployment
    conditions: Conditions | None = None  # lab conditions (client/conditions.py): slower, thinner, away


@dataclass
class ClientStats:
    """Counters a supervisor (or a test) can read to see the client make progress."""
    connects: int = 0
    tasks_done: dict[str, int] = field(default_factory=lambda: {"train": 0, "validate": 0, "failed": 0})
    dropouts: int = 0          # tasks abandoned by a lab dropout (conditions.dropout)
    crashes: int = 0           # training tasks ended by a lab crash (conditions.crash)
    offline_periods: int = 0   # windows of the lab's on/off trace spent disconnected


class _Departure(Exception):
    """The client leaves now, as its lab conditions say (a crash, an offline window): the
    task is abandoned without a report and the connection torn down."""


class FedClient:
    def __init__(self, settings: ClientSettings, project: Project | None = None) -> None:
        if not settings.combiner and not settings.reducer_url:
            raise ValueError("a client needs a combiner address or a reducer URL")
        if project is None and settings.project is None and not settings.reducer_url:
            raise ValueError("without --project the client runs the reducer's compute package: give --reducer")
        self.settings = settings
        self.project: Project | None = project or (Project.load(settings.project) if settings.project else None)
        self.work_dir = Path(settings.work_dir)
        (self.work_dir / "models").mkdir(parents=True, exist_ok=True)
        (self.work_dir / "out").mkdir(parents=True, exist_ok=True)
        self.stats = ClientStats()
        self.running = False  # serve() is running (a swarm counts its live clients by it)
        self._cached: list[str] = []
        self._progress_unsupported = False  # the combiner predates ReportProgress: stop sending it
        if settings.attack is not None:
            log.warning("%s: BYZANTINE (a lab attack): %s", settings.name, settings.attack.describe())
        self._ended_here = False  # this side ended the task stream (its cancellation is no error)
        # lab conditions (client/conditions.py); a client without them behaves as before
        self.conditions = settings.conditions or Conditions()
        self._held_slot: Any = None  # the task slot the running task holds, released while it waits
        self._wake = threading.Event()  # ends those waits early: stopping, or an offline window began
        self._dropout_draws = random.Random(f"{self.conditions.seed}:dropout")  # one stream per kind, so
        self._crash_draws = random.Random(f"{self.conditions.seed}:crash")      # one does not shift the other
        self._rejoin_at = 0.0      # time.monotonic() before which a client that left stays away
        self._epoch = 0.0          # time.time() the offline trace counts from (set by run)
        self._offline_seen: set[int] = set()  # trace windows already counted in stats.offline_periods
        self._offline_now = False  # an offline window closed this session's channel

    # ---- connection lifecycle
    def run(self, stop: threading.Event | None = None) -> None:
        """Serve tasks until ``stop`` is set, reconnecting for as long as it takes."""
        stop = stop or threading.Event()
        if self.project is None:
            self.project = self._fetch_project(stop)
            if self.project is None:
                return
        started = time.perf_counter()
        self.project.warm_up()
        log.info("%s: project %s loaded in %.1fs", self.settings.name, self.project.root.name,
                 time.perf_counter() - started)
        run_clients([self], stop)

    async def serve(self, stop: asyncio.Event, slots: TaskSlots) -> None:
        """This client's connection, on the running loop, until ``stop`` is set: find a
        combiner, connect, take tasks; after a lost connection back off and start again."""
        self.running = True
        try:
            await self._serve(stop, slots)
        finally:
            self.running = False

    async def _serve(self, stop: asyncio.Event, slots: TaskSlots) -> None:
        delay = self.settings.backoff_initial
        self._epoch = self.conditions.epoch or time.time()
        while not stop.is_set():
            if not await self._stay_offline(stop):
                break
            try:
                address = self.settings.combiner or await asyncio.to_thread(self._combiner_address)
                if await self._session(address, stop, slots):
                    delay = self.settings.backoff_initial  # it was connected: start backoff afresh
            except (grpc.RpcError, ConnectionError) as exc:
                log.warning("%s: %s", self.settings.name, _describe(exc))
            if stop.is_set():
                break
            if self._offline_now:  # an offline window began: wait it out (above), no backoff
                self._offline_now = False
                continue
            away = self._rejoin_at - time.monotonic()
            if away > 0:  # it left on purpose (dropout, crash): back after rejoin_s, not a backoff
                log.info("%s: away for %.1fs", self.settings.name, away)
                await _wait(stop, away)
                continue
            wait = delay * random.uniform(0.8, 1.2)
            log.info("%s: reconnecting in %.1fs", self.settings.name, wait)
            await _wait(stop, wait)
            delay = min(delay * 2, self.settings.backoff_max)

    def _fetch_project(self, stop: threading.Event) -> Project | None:
        """Wait for the reducer's compute package, then load it (None if stopped first)."""
        delay = self.settings.backoff_initial
        while not stop.is_set():
            try:
                root = fetch_package(self.settings.reducer_url or "", self.work_dir, self.settings.token,
                                     self.settings.tls_ca or True, self.settings.package_sha256)
                return Project.load(root)
            except PackageUnavailable as exc:
                log.info("%s: %s; retrying in %.0fs", self.settings.name, exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, self.settings.backoff_max)
        return None

    def _combiner_address(self) -> str:
        """Ask the reducer (blocking: the loop runs it in its default executor, whose few
        threads also keep a swarm's thousands of clients from asking all at once)."""
        url = self.settings.reducer_url.rstrip("/") + "/assign"  # type: ignore[union-attr]
        headers = {"Authorization": f"Token {self.settings.token}"} if self.settings.token else {}
        try:
            reply = requests.get(url, params={"name": self.settings.name}, headers=headers, timeout=10,
                                 verify=self.settings.tls_ca or True)
        except requests.RequestException as exc:
            raise DiscoveryError(f"reducer at {self.settings.reducer_url} not reachable ({exc.__class__.__name__})") from None
        if reply.status_code != 200:
            raise DiscoveryError(f"reducer gave no combiner: {reply.status_code} {reply.text.strip()[:200]}")
        body = reply.json()
        return f"{body['host']}:{body['port']}"

    async def _session(self, address: str, stop: asyncio.Event, slots: TaskSlots) -> bool:
        """One connection to one combiner; returns whether it got connected at all.

        The task stream is read here, on the loop; a task runs in a thread of its own
        (``_run_task``) while this waits, so the stream is read again once it is done."""
        loop = asyncio.get_running_loop()
        channel = make_aio_channel(address, ca_file=self.settings.tls_ca or None)
        metadata = token_metadata(self.settings.token)
        stub = rpc.CombinerStub(channel)
        calls = LoopCalls(loop, metadata)
        blocking = (BlockingStub(stub, calls), BlockingTransfer(ModelTransferStub(channel), calls))
        helpers: list[asyncio.Task[Any]] = []
        self._ended_here = False
        try:
            reply = await stub.Connect(pb.ConnectRequest(client_name=self.settings.name, version=__version__),
                                       timeout=10, metadata=metadata)
            self.stats.connects += 1
            log.info("%s: connected to combiner %s at %s", self.settings.name, reply.combiner_name, address)
            stream = stub.TaskStream(pb.TaskStreamRequest(client_name=self.settings.name), metadata=metadata)
            helpers.append(loop.create_task(self._end_on(stop, stream)))
            interval = max(0.1, min(reply.heartbeat_interval_s, MAX_HEARTBEAT_INTERVAL_S))
            helpers.append(loop.create_task(self._heartbeats(stub, stream, interval, metadata, stop)))
            self._watch_offline(channel, helpers)
            try:
                async for task in stream:
                    if self._draw(self._dropout_draws, self.conditions.dropout):
                        self._leave("dropout", task)
                        return True  # abandoned unanswered: the channel closes below
                    await slots.run(self, task, *blocking)
            except _Departure as exc:
                if self._offline_now:
                    log.info("%s: task abandoned, disconnected (offline window): %s", self.settings.name,
                             exc.__cause__ or exc)
                return True
            except asyncio.CancelledError:
                if not self._ended_here:  # this coroutine itself is cancelled, not the stream
                    raise
                if self._offline_now:
                    log.info("%s: disconnected (offline window)", self.settings.name)
            except grpc.RpcError as exc:
                if self._offline_now:
                    log.info("%s: disconnected (offline window)", self.settings.name)
                elif exc.code() != grpc.StatusCode.CANCELLED or not stop.is_set():
                    log.warning("%s: task stream ended: %s", self.settings.name, _describe(exc))
            return True
        finally:
            for helper in helpers:
                helper.cancel()
            await channel.close()

    def _end_stream(self, stream: Any) -> None:
        """End the task stream from this side (stopping, a forgotten client, an offline window)."""
        self._ended_here = True
        stream.cancel()

    async def _end_on(self, stop: asyncio.Event, stream: Any) -> None:
        await stop.wait()
        self._wake.set()  # a wait for the lab's conditions ends now too
        self._end_stream(stream)

    # ---- lab conditions (client/conditions.py)
    def _idle(self, seconds: float) -> None:
        """Wait ``seconds`` as the lab's conditions say (a slow device's rest of the training, a
        thin link, latency) without holding a task slot: the clients of a swarm share the
        slots and the CPU, and a client that only waits must leave both to the others. Ends
        early when the client stops or goes offline. Called in the task's thread."""
        if seconds <= 0 or self._wake.is_set():
            return
        held = self._held_slot
        if held is not None:
            held.release()
        try:
            self._wake.wait(seconds)
        finally:
            if held is not None:
                held.acquire()

    @staticmethod
    def _draw(draws: random.Random, probability: float) -> bool:
        return probability > 0 and draws.random() < probability

    def _leave(self, why: str, task: pb.Task) -> None:
        """Count a dropout or a crash and stay away ``rejoin_s`` (the caller tears the connection down)."""
        if why == "dropout":
            self.stats.dropouts += 1
        else:
            self.stats.crashes += 1
        self._rejoin_at = time.monotonic() + self.conditions.rejoin_s
        log.info("%s: lab %s: abandoning task %s of round %d, back in %gs", self.settings.name, why, task.task_id,
                 task.round_number, self.conditions.rejoin_s)

    def _offline_window(self, now: float) -> tuple[int, float, float] | None:
        """The trace window holding ``now`` (time.time()), or else the next one: (index, start, end)."""
        since = now - self._epoch
        for i, (start, end) in enumerate(self.conditions.offline):
            if since < end:
                return i, self._epoch + start, self._epoch + end
        return None

    async def _stay_offline(self, stop: asyncio.Event) -> bool:
        """Before connecting: wait out an offline window the client is in; False if stopped meanwhile."""
        while not stop.is_set():
            window = self._offline_window(time.time())
            if window is None or window[1] > time.time():
                return True
            index, _, end = window
            if index not in self._offline_seen:
                self._offline_seen.add(index)
                self.stats.offline_periods += 1
                log.info("%s: offline (lab trace) for %.1fs", self.settings.name, end - time.time())
            await _wait(stop, end - time.time())
        return False

    def _watch_offline(self, channel: grpc.aio.Channel, helpers: list[asyncio.Task[Any]]) -> None:
        """While connected, tear the connection down when the next offline window begins."""
        self._offline_now = False
        self._wake.clear()
        window = self._offline_window(time.time())
        if window is None:
            return

        async def watch() -> None:
            index, start, end = window
            await asyncio.sleep(max(0.0, start - time.time()))
            if index not in self._offline_seen:
                self._offline_seen.add(index)
                self.stats.offline_periods += 1
            log.info("%s: offline (lab trace) for %.1fs", self.settings.name, end - time.time())
            self._offline_now = True
            self._ended_here = True
            self._wake.set()
            await channel.close()  # every call in flight ends: whatever task is open is abandoned

        helpers.append(asyncio.get_running_loop().create_task(watch()))

    def _throttle(self, bps: float) -> Throttle | None:
        return Throttle(bps, sleep=self._idle) if bps > 0 else None

    async def _heartbeats(self, stub: rpc.CombinerStub, stream: Any, interval: float,
                          metadata: tuple[tuple[str, str], ...], stop: asyncio.Event) -> None:
        """Heartbeat as often as the combiner asks (each answer may space them out); cancelled
        when the session ends.

        A combiner that forgot this client (``known`` false) is reconnected to at once. One
        that does not answer is given up only after three failures in a row and
        ``max(3 intervals, SILENT_COMBINER_S)`` without an answer: a combiner busy with
        thousands of clients answers late, and reconnecting them all would only add to its
        load (the stream's keepalive finds one that is gone)."""
        misses = 0
        answered = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            if stop.is_set():
                return
            try:
                reply = await stub.Heartbeat(pb.HeartbeatRequest(client_name=self.settings.name),
                                             timeout=max(2 * interval, 2.0), metadata=metadata)
            except grpc.RpcError as exc:
                misses += 1
                if misses >= 3 and time.monotonic() - answered > max(3 * interval, SILENT_COMBINER_S):
                    log.warning("%s: %d heartbeats failed (%s); reconnecting", self.settings.name, misses,
                                _describe(exc))
                    self._end_stream(stream)
                    return
                continue
            if not reply.known:
                log.warning("%s: combiner no longer knows this client; reconnecting", self.settings.name)
                self._end_stream(stream)
                return
            misses = 0
            answered = time.monotonic()
            if reply.next_interval_s > 0:
                interval = max(0.1, min(reply.next_interval_s, MAX_HEARTBEAT_INTERVAL_S))

    # ---- tasks
    def _run_task(self, held_slot: Any, task: pb.Task, stub: Any, transfer: Any) -> None:
        """A task, in a thread of its own (TaskSlots.run), holding ``held_slot`` (or None)."""
        self._held_slot = held_slot
        try:
            self._handle(task, stub, transfer)
        finally:
            self._held_slot = None

    def _handle(self, task: pb.Task, stub: Any, transfer: Any) -> None:
        kind = "train" if task.type == pb.TRAIN else "validate"
        log.info("%s: %s task for round %d (%s)", self.settings.name, kind, task.round_number, task.round_id)
        timings: dict[str, float] = {}
        conditions = self.conditions
        crash_at = (self._crash_draws.random() if task.type == pb.TRAIN and
                    self._draw(self._crash_draws, conditions.crash) else None)  # the fraction of training done
        try:
            self._progress(stub, task, pb.PHASE_DOWNLOADING)
            t = time.perf_counter()
            model = self._download(transfer, task.model_id)
            timings["download"] = time.perf_counter() - t
            config = json.loads(task.config_json or "{}")
            ctx = TaskContext(client_name=self.settings.name, data_path=self.settings.data_path,
                              partition_index=self.settings.partition_index,
                              num_partitions=self.settings.num_partitions, round_id=task.round_id,
                              config=config.get("task", {}), work_dir=self.work_dir,
                              round_number=task.round_number, session_id=task.session_id,
                              settings=config.get("strategy", {}),
                              attack=self.settings.attack.spec if self.settings.attack else "")
            out = self.work_dir / "out" / task.task_id
            personal = PersonalLayers.from_settings(self.work_dir, task.session_id, ctx.settings)
            mine = self.work_dir / "out" / f"{task.task_id}.personal"  # the model with this client's own layers
            try:
                t = time.perf_counter()
                if task.type == pb.TRAIN:
                    self._progress(stub, task, pb.PHASE_TRAINING)
                    t = time.perf_counter()
                    metadata = self.project.train(personal.apply(model, mine) if personal else model, out, ctx)
                    if crash_at is not None:
                        self._crash(self._compute_seconds(time.perf_counter() - t), crash_at, task)
                    if personal:
                        personal.remember(out)
                    if self.settings.attack is not None:
                        self.settings.attack.apply_to_file(model, out, task.task_id)
                    self._slow_down(self._compute_seconds(time.perf_counter() - t), timings)
                    timings["train"] = time.perf_counter() - t
                    self._progress(stub, task, pb.PHASE_UPLOADING)
                    t = time.perf_counter()
                    uploaded = self._upload(transfer, out)
                    timings["upload"] = time.perf_counter() - t
                    self._idle(conditions.latency_s)
                    ack = stub.ReportUpdate(pb.ModelUpdate(
                        client_name=self.settings.name, task_id=task.task_id, round_id=task.round_id,
                        model_id=uploaded.model_id, parent_model_id=task.model_id,
                        num_examples=metadata["num_examples"], metadata_json=json.dumps(metadata),
                        timings=timings))
                else:
                    self._progress(stub, task, pb.PHASE_VALIDATING)
                    t = time.perf_counter()
                    metrics = self.project.validate(model, out, ctx)
                    if personal and personal.has_own():  # the personalised model too (fedper)
                        metrics = with_personal(metrics, self.project.validate(personal.apply(model, mine), out, ctx))
                    self._slow_down(self._compute_seconds(time.perf_counter() - t), timings)
                    timings["validate"] = time.perf_counter() - t
                    self._idle(conditions.latency_s)
                    ack = stub.ReportValidation(pb.ValidationReport(
                        client_name=self.settings.name, task_id=task.task_id, round_id=task.round_id,
                        model_id=task.model_id, num_examples=int(metrics.get("num_examples", 0)),
                        metrics_json=json.dumps(metrics), timings=timings))
            finally:
                out.unlink(missing_ok=True)
                mine.unlink(missing_ok=True)
                release_free_memory()  # between tasks, hold only what is live (fedtier/memory.py)
            if not ack.ok:
                log.warning("%s: combiner rejected the %s report: %s", self.settings.name, kind, ack.message)
            self.stats.tasks_done[kind] += 1
        except (grpc.RpcError, _Departure):
            raise  # the connection is gone (or goes now): let the session end and reconnect
        except Exception as exc:  # the project's code failed: tell the combiner, keep serving
            if self._offline_now:  # no: the channel was closed under it (a closed channel raises ValueError)
                raise _Departure("offline") from exc
            log.error("%s: %s task failed: %s", self.settings.name, kind, exc)
            self.stats.tasks_done["failed"] += 1
            self._idle(conditions.latency_s)
            stub.ReportFailure(pb.TaskFailure(client_name=self.settings.name, task_id=task.task_id,
                                              round_id=task.round_id, error=str(exc)[:4000]))

    def _progress(self, stub: Any, task: pb.Task, phase: int) -> None:
        """Tell the combiner this task entered ``phase``, for its live view. The task does not
        depend on it: a refusal or a combiner from before ReportProgress is logged, not raised
        (a lost connection shows at the next call the task makes)."""
        if self._progress_unsupported:
            return
        try:
            stub.ReportProgress(pb.TaskProgress(client_name=self.settings.name, task_id=task.task_id,
                                                round_id=task.round_id, phase=phase), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._progress_unsupported = True
            log.debug("%s: progress %s not taken: %s", self.settings.name, pb.TaskPhase.Name(phase), _describe(exc))

    def _compute_seconds(self, measured: float) -> float:
        """The task's own compute time: in a worker pool (client/pool.py) the time the task ran
        in its worker, not the wait for a free one, which belongs to the lab's machine, not
        to the device a slow client stands for."""
        of_pool = getattr(self.project, "compute_seconds", None)
        seconds = of_pool() if of_pool is not None else None
        return measured if seconds is None else min(measured, seconds)

    def _slow_down(self, measured: float, timings: dict[str, float]) -> None:
        """A client of speed s takes measured / s: it waits the rest, idle (``_idle``)."""
        if self.conditions.speed < 1:
            timings["slowdown"] = measured * (1 / self.conditions.speed - 1)
            self._idle(timings["slowdown"])

    def _crash(self, measured: float, fraction: float, task: pb.Task) -> None:
        """Crash at ``fraction`` of the task's (slowed) training time, then tear the connection down.

        The project's training cannot be stopped part way in a thread, so it runs to its end and
        its result is thrown away; the combiner sees the connection drop at the crash point, or
        as the training returns when that point fell inside the measured part."""
        self._idle(fraction * measured / self.conditions.speed - measured)
        self._leave("crash", task)
        raise _Departure("crash")

    def _upload(self, transfer: Any, path: Path) -> pb.UploadResponse:
        self._idle(self.conditions.latency_s)
        throttle = self._throttle(self.conditions.upload_bps)
        chunks = file_chunks(path, client_name=self.settings.name,
                             chunk_size=throttle.chunk_size(CHUNK_SIZE) if throttle else CHUNK_SIZE)
        return transfer.UploadModel(throttled(chunks, throttle, data_bytes))

    def _download(self, transfer: Any, model_id: str) -> Path:
        target = self.work_dir / "models" / check_model_id(model_id)
        if target.is_file():
            return target
        self._idle(self.conditions.latency_s)
        stream = transfer.DownloadModel(pb.DownloadRequest(model_id=model_id, client_name=self.settings.name))
        receive_to_file(throttled(stream, self._throttle(self.conditions.download_bps), data_bytes),
                        lambda header: target, durable=False,  # a scratch copy
                        max_size=limits.current().model_bytes)
        self._cached.append(model_id)
        while len(self._cached) > self.settings.models_kept:
            (self.work_dir / "models" / self._cached.pop(0)).unlink(missing_ok=True)
        return target

    def close(self) -> None:
        shutil.rmtree(self.work_dir / "out", ignore_errors=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


class TaskSlots:
    """At most ``count`` tasks of the clients on one loop run at once (0: no bound; client/swarm.py
    says why a swarm wants a bound). A session takes a slot before its task's thread starts; the
    thread gives it back while the task only waits (``FedClient._idle``) and takes one again after."""

    def __init__(self, count: int = 0) -> None:
        if count < 0:
            raise ValueError(f"task slots must not be negative, got {count}")
        self._free = asyncio.Semaphore(count) if count else None

    async def run(self, client: FedClient, task: pb.Task, stub: Any, transfer: Any) -> None:
        """Run ``client``'s task in a thread of its own, holding a slot; raises what the task raised."""
        loop = asyncio.get_running_loop()
        held = None
        if self._free is not None:
            await self._free.acquire()
            held = _HeldSlot(self._free, loop)
        try:
            await _in_thread(f"{client.settings.name}-task", client._run_task, held, task, stub, transfer)
        finally:
            if held is not None and held.held:
                self._free.release()  # type: ignore[union-attr]


class _HeldSlot:
    """A task's slot as its thread sees it: ``release`` while waiting, ``acquire`` after."""

    def __init__(self, free: asyncio.Semaphore, loop: asyncio.AbstractEventLoop) -> None:
        self.free = free
        self.loop = loop
        self.held = True

    def release(self) -> None:
        self.held = False
        self.loop.call_soon_threadsafe(self.free.release)

    def acquire(self) -> None:
        asyncio.run_coroutine_threadsafe(self.free.acquire(), self.loop).result()
        self.held = True


async def _in_thread(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new thread, awaited. Not the loop's executor: its few threads would
    make a slow task (one that waits out its lab conditions, slot released) hold up others."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def body() -> None:
        try:
            outcome: tuple[Callable[[Any], None], Any] = (done.set_result, fn(*args))
        except BaseException as exc:  # noqa: BLE001 (handed to the awaiting coroutine)
            outcome = (done.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it any more
            loop.call_soon_threadsafe(_settle, done, *outcome)

    threading.Thread(target=body, name=name, daemon=True).start()
    return await done


def _settle(future: asyncio.Future[Any], setter: Callable[[Any], None], value: Any) -> None:
    if not future.done():
        setter(value)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


def run_clients(clients: Sequence[FedClient], stop: threading.Event, task_slots: int = 0,
                start_interval: float = 0.0, started: threading.Event | None = None) -> None:
    """Serve ``clients`` on one event loop in this thread until ``stop`` is set.

    Their connections, task streams and heartbeats are coroutines: an idle client holds no
    thread, so one process holds thousands. Each task runs in a thread of its own, at most
    ``task_slots`` at once (0: no bound). The clients start ``start_interval`` seconds apart;
    ``started`` is set once all of them have."""
    asyncio.run(_serve_all(clients, stop, TaskSlots(task_slots), start_interval, started))


async def _serve_all(clients: Sequence[FedClient], stop: threading.Event, slots: TaskSlots,
                     start_interval: float, started: threading.Event | None) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def relay() -> None:  # the caller's threading.Event, seen on the loop
        stop.wait()
        with contextlib.suppress(RuntimeError):  # the loop ended first
            loop.call_soon_threadsafe(stopped.set)

    threading.Thread(target=relay, name="client-stop", daemon=True).start()
    serving = []
    try:
        for client in clients:
            if stopped.is_set():
                break
            serving.append(loop.create_task(_serve_one(client, stopped, slots)))
            await _wait(stopped, start_interval)
        log.info("%d clients started", len(serving))
    finally:
        if started is not None:
            started.set()
    await asyncio.gather(*serving)


async def _serve_one(client: FedClient, stop: asyncio.Event, slots: TaskSlots) -> None:
    try:
        await client.serve(stop, slots)
    except Exception:  # one broken client must not take the others with it
        log.exception("%s: stopped by an unexpected error", client.settings.name)
