"""gRPC servicers: translate calls to the registry, cache and runner, nothing more."""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Callable, Iterator

import grpc

from fedtier import limits
from fedtier.aggregators.update_check import UpdateCheck
from fedtier.combiner.metrics import CombinerMetrics, counting
from fedtier.combiner.model_cache import ModelCache, NotTheUploader, UploadRefused
from fedtier.combiner.registry import END_OF_STREAM, ClientRegistry, CombinerFullError
from fedtier.combiner.round import ProgressRefused
from fedtier.combiner.runner import RoundRunner
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.transport.auth import IdentityInterceptor
from fedtier.transport.streams import TransferError
from fedtier.transport.wire import Chunk

log = logging.getLogger(__name__)


def _require_name(name: str, context: grpc.ServicerContext) -> None:
    if not name or len(name) > 128:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_name must be 1-128 characters")


OPEN = IdentityInterceptor(None, "")  # identities not checked: every name is taken as given


def caller_name(auth: IdentityInterceptor, context: grpc.ServicerContext) -> str | None:
    """The name the caller's verified client credential gives; None when identities are not
    checked or the caller is the reducer (which names no client)."""
    caller = auth.identity(context)
    return caller.name if caller is not None and caller.role == "client" else None


def require_own_name(auth: IdentityInterceptor, name: str, context: grpc.ServicerContext) -> None:
    """Every client_name a request carries must be its sender's: a client acts only as itself."""
    verified = caller_name(auth, context)
    if verified is not None and name != verified:
        log.warning("client %s sent a request as %r: refused", verified, name)
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"client_name {name!r} is not the name in your credential ({verified!r})")


class CombinerServicer(rpc.CombinerServicer):
    def __init__(self, name: str, registry: ClientRegistry, runner: RoundRunner,
                 heartbeat_interval: float, auth: IdentityInterceptor = OPEN) -> None:
        self.name = name
        self.registry = registry
        self.runner = runner
        self.heartbeat_interval = heartbeat_interval
        self.auth = auth

    def Connect(self, request: pb.ConnectRequest, context: grpc.ServicerContext) -> pb.ConnectResponse:
        _require_name(request.client_name, context)
        require_own_name(self.auth, request.client_name, context)
        self.registry.connect(request.client_name)
        return pb.ConnectResponse(combiner_name=self.name, heartbeat_interval_s=self.heartbeat_interval,
                                  heartbeat_timeout_s=self.registry.heartbeat_timeout)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        require_own_name(self.auth, request.client_name, context)
        return pb.HeartbeatResponse(known=self.registry.heartbeat(request.client_name))

    def TaskStream(self, request: pb.TaskStreamRequest, context: grpc.ServicerContext) -> Iterator[pb.Task]:
        _require_name(request.client_name, context)
        require_own_name(self.auth, request.client_name, context)
        try:
            # a second stream under a name replaces the first: with identities checked, only
            # the holder of that name's credential gets here (a restarted client, say)
            generation, tasks = self.registry.open_stream(request.client_name)
        except KeyError:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "call Connect before TaskStream")
        except CombinerFullError as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        context.add_callback(lambda: self.registry.close_stream(request.client_name, generation))
        try:
            while context.is_active():
                try:
                    task = tasks.get(timeout=1.0)
                except queue.Empty:
                    continue
                if task is END_OF_STREAM:
                    return
                yield task
        finally:
            self.registry.close_stream(request.client_name, generation)

    def ReportUpdate(self, request: pb.ModelUpdate, context: grpc.ServicerContext) -> pb.Ack:
        require_own_name(self.auth, request.client_name, context)
        return self.runner.submit_update(request)

    def ReportValidation(self, request: pb.ValidationReport, context: grpc.ServicerContext) -> pb.Ack:
        require_own_name(self.auth, request.client_name, context)
        return self.runner.submit_validation(request)

    def ReportFailure(self, request: pb.TaskFailure, context: grpc.ServicerContext) -> pb.Ack:
        require_own_name(self.auth, request.client_name, context)
        return self.runner.submit_failure(request)

    def ReportProgress(self, request: pb.TaskProgress, context: grpc.ServicerContext) -> pb.Ack:
        require_own_name(self.auth, request.client_name, context)
        try:
            return self.runner.progress(request)
        except ProgressRefused as exc:  # debug, not warning: a refused message changes nothing
            log.debug("progress from %s refused: %s", request.client_name[:128], exc)
            context.abort(exc.code, str(exc))


class IdleUploads:
    """Cancels an upload whose sender has sent nothing for FEDTIER_MAX_UPLOAD_IDLE_SECONDS.

    An upload holds a worker thread (and its sender's upload slot) for as long as its
    stream stays open, and the synchronous server cannot interrupt a thread blocked on the
    next message; cancelling the call ends that wait, the receiver deletes its partial
    file, and the slot is free again. One thread watches every upload."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[grpc.ServicerContext, float]] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def watch(self, context: grpc.ServicerContext, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        """``chunks``, each one restarting this upload's idle clock."""
        key = id(context)
        with self._lock:
            self._last[key] = (context, time.monotonic())
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._cancel_idle, name="idle-uploads", daemon=True)
                self._watcher.start()
        try:
            for chunk in chunks:
                with self._lock:
                    self._last[key] = (context, time.monotonic())
                yield chunk
        finally:
            with self._lock:
                self._last.pop(key, None)

    def _cancel_idle(self) -> None:
        while True:
            bounds = limits.current()
            time.sleep(min(1.0, bounds.upload_idle_seconds / 4))
            now = time.monotonic()
            with self._lock:
                idle = [(key, context) for key, (context, last) in self._last.items()
                        if now - last > bounds.upload_idle_seconds]
                for key, _ in idle:
                    self._last.pop(key)
            for _, context in idle:
                log.warning("upload cancelled: nothing received for %s", bounds.describe("upload_idle_seconds"))
                context.cancel()  # the receiver sees its stream end early and deletes the partial file


class ModelTransferServicer(rpc.ModelTransferServicer):
    def __init__(self, cache: ModelCache,
                 check: Callable[[pb.TransferHeader], UpdateCheck | None] | None = None,
                 auth: IdentityInterceptor = OPEN, metrics: CombinerMetrics | None = None) -> None:
        self.cache = cache
        self.metrics = metrics or CombinerMetrics()
        self.check = check  # the runner's: updates of a running round are checked as they arrive
        self.auth = auth  # the reducer's calls choose model ids; clients' get one, recorded as theirs
        self.idle = IdleUploads()

    def UploadModel(self, request_iterator: Iterator[Chunk],
                    context: grpc.ServicerContext) -> pb.UploadResponse:
        headers: list[pb.TransferHeader] = []
        chunks = self.idle.watch(context, counting(request_iterator, self.metrics.model_bytes.labels("received").inc,
                                                   headers))

        def refused(reason: str) -> None:  # counted as an update refused unless the reducer's push
            if not (headers and headers[0].model_id):
                self.metrics.reject("upload", reason)

        try:
            received = self.cache.receive(chunks, self.check, may_name=self.auth.may_name(context),
                                          uploader=caller_name(self.auth, context))
        except NotTheUploader as exc:
            log.warning("upload refused: %s", exc)
            refused("not_uploader")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except UploadRefused as exc:  # at the header: nothing was written
            log.warning("upload refused: %s", exc)
            refused("over_bound" if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED else "no_task")
            context.abort(exc.code, f"upload refused: {exc}")
        except (TransferError, ValueError) as exc:
            log.warning("upload rejected: %s", exc)
            refused("transfer")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"upload rejected: {exc}")
        finally:
            chunks.close()  # stops the idle clock of this upload
        return pb.UploadResponse(model_id=received.path.name, size=received.size, sha256=received.sha256,
                                 xxh3=received.xxh3)

    def DownloadModel(self, request: pb.DownloadRequest, context: grpc.ServicerContext) -> Iterator[Chunk]:
        require_own_name(self.auth, request.client_name, context)
        try:
            chunks = self.cache.chunks(request.model_id)
        except (KeyError, ValueError):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id!r} is not on this combiner")
        yield from counting(chunks, self.metrics.model_bytes.labels("sent").inc)


class ControlServicer(rpc.ControlServicer):
    def __init__(self, name: str, registry: ClientRegistry, runner: RoundRunner) -> None:
        self.name = name
        self.registry = registry
        self.runner = runner
        self.reducer_url = ""
        self.instance_id = uuid.uuid4().hex  # per process: the reducer sees a restart by its change

    def Configure(self, request: pb.ConfigureRequest, context: grpc.ServicerContext) -> pb.Ack:
        self.reducer_url = request.reducer_url
        return pb.Ack(ok=True)

    def StartRound(self, request: pb.RoundRequest, context: grpc.ServicerContext) -> pb.RoundResult:
        # if the reducer dies or gives up, nobody will collect this round: stop it so the
        # combiner is free for the next one (after a normal return this finds nothing running)
        context.add_callback(lambda: self.runner.stop(request.round_id, "the reducer went away"))
        return self.runner.run(request)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.CombinerStatus:
        clients = self.registry.snapshot()
        return pb.CombinerStatus(name=self.name, clients=clients,
                                 round_in_progress=self.runner.round_in_progress,
                                 last_model_id=self.runner.last_model_id,
                                 active_clients=sum(1 for c in clients if c.active),
                                 instance_id=self.instance_id, round=self.runner.live())

    def Stop(self, request: pb.StopRequest, context: grpc.ServicerContext) -> pb.Ack:
        return self.runner.stop(request.round_id)

    def AdoptModel(self, request: pb.AdoptRequest, context: grpc.ServicerContext) -> pb.Ack:
        try:
            adopted = self.runner.cache.adopt(request.model_id, request.sha256, request.size)
        except ValueError as exc:  # a malformed model id
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.Ack(ok=adopted, message="" if adopted else "not held here: upload it")
