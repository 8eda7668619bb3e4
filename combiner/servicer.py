"""gRPC servicers: translate calls to the registry, cache and runner, nothing more.

They run on grpc's asyncio server (combiner/server.py). A connected client costs its
task stream, which waits on the event loop (a coroutine, not a thread), so the clients
a combiner holds are bounded by its memory, not by a thread pool. Handlers that only
touch the registry (Connect, Heartbeat, TaskStream) are coroutines; those that block
(the round, uploads to disk, reports into a round) are plain functions, which the
server runs on its thread pool, and an upload's chunks are read on the loop, each
within the idle bound, and handed to the synchronous receiver in that pool.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import Executor
from typing import Any, AsyncIterator, Callable, Iterator

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
from fedtier.identity import CredentialError
from fedtier.transport.auth import IdentityInterceptor
from fedtier.transport.streams import TransferError
from fedtier.transport.wire import Chunk

log = logging.getLogger(__name__)


NAME_BOUND = "client_name must be 1-128 characters"


def _require_name(name: str, context: grpc.ServicerContext) -> None:
    if not name or len(name) > 128:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, NAME_BOUND)


OPEN = IdentityInterceptor(None, "")  # identities not checked: every name is taken as given


def caller_name(auth: IdentityInterceptor, context: grpc.ServicerContext) -> str | None:
    """The name the caller's verified client credential gives; None when identities are not
    checked or the caller is the reducer (which names no client)."""
    caller = auth.identity(context)
    return caller.name if caller is not None and caller.role == "client" else None


def require_own_name(auth: IdentityInterceptor, name: str, context: grpc.ServicerContext) -> None:
    """Every client_name a request carries must be its sender's: a client acts only as itself."""
    refused = own_name_refusal(auth, name, context)
    if refused is not None:
        context.abort(*refused)


def own_name_refusal(auth: IdentityInterceptor, name: str, context: Any,
                     check_bound: bool = False) -> tuple[grpc.StatusCode, str] | None:
    """Why a request naming ``name`` is refused (code, message), or None: the rule of
    :func:`require_own_name` for handlers of either kind, which abort each in their own way."""
    if check_bound and (not name or len(name) > 128):
        return grpc.StatusCode.INVALID_ARGUMENT, NAME_BOUND
    try:
        caller = auth.caller(context)
    except CredentialError as exc:  # it expired since the interceptor looked
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    verified = caller.name if caller is not None and caller.role == "client" else None
    if verified is not None and name != verified:
        log.warning("client %s sent a request as %r: refused", verified, name)
        return grpc.StatusCode.PERMISSION_DENIED, f"client_name {name!r} is not the name in your credential ({verified!r})"
    return None


class LoopMailbox:
    """A client's tasks: put from any thread (the round's), awaited by its TaskStream on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[pb.Task | None] = asyncio.Queue()

    def put(self, item: pb.Task | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop has stopped: the server is shutting down, the stream with it
            pass

    async def get(self) -> pb.Task | None:
        return await self._queue.get()


#: heartbeats a second a combiner asks of all its clients together, where the stream decides liveness
HEARTBEATS_PER_SECOND = 50.0


class CombinerServicer(rpc.CombinerServicer):
    def __init__(self, name: str, registry: ClientRegistry, runner: RoundRunner,
                 heartbeat_interval: float, auth: IdentityInterceptor = OPEN) -> None:
        self.name = name
        self.registry = registry
        self.runner = runner
        self.heartbeat_interval = heartbeat_interval
        self.auth = auth

    async def Connect(self, request: pb.ConnectRequest, context: grpc.aio.ServicerContext) -> pb.ConnectResponse:
        refused = own_name_refusal(self.auth, request.client_name, context, check_bound=True)
        if refused is not None:
            await context.abort(*refused)
        self.registry.connect(request.client_name)
        return pb.ConnectResponse(combiner_name=self.name, heartbeat_interval_s=self.interval(),
                                  heartbeat_timeout_s=self.registry.heartbeat_timeout)

    async def Heartbeat(self, request: pb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        refused = own_name_refusal(self.auth, request.client_name, context)
        if refused is not None:
            await context.abort(*refused)
        return pb.HeartbeatResponse(known=self.registry.heartbeat(request.client_name),
                                    next_interval_s=self.interval())

    def interval(self) -> float:
        """The heartbeat interval to give a client now. Where the open stream decides who is
        active, a heartbeat is only a fallback, so a combiner holding thousands of clients
        spaces them out to about ``HEARTBEATS_PER_SECOND`` from all of them together (at a
        fixed interval, 5,000 clients sent 500 a second, which starved the combiner's loop in
        a round and sent its clients reconnecting). Under FEDn's heartbeat rule the interval
        is the rule itself and stays as set."""
        if self.registry.liveness != "stream":
            return self.heartbeat_interval
        return max(self.heartbeat_interval, self.registry.open_streams() / HEARTBEATS_PER_SECOND)

    async def TaskStream(self, request: pb.TaskStreamRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Task]:
        name = request.client_name
        refused = own_name_refusal(self.auth, name, context, check_bound=True)
        if refused is not None:
            await context.abort(*refused)
        mailbox = LoopMailbox(asyncio.get_running_loop())
        try:
            # a second stream under a name replaces the first: with identities checked, only
            # the holder of that name's credential gets here (a restarted client, say)
            generation, _ = self.registry.open_stream(name, mailbox)
        except KeyError:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "call Connect before TaskStream")
        except CombinerFullError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        # the call ends (client gone, connection reset, keepalive unanswered, server stopping):
        # the client is inactive at once, whether or not this coroutine is resumed again
        context.add_done_callback(lambda _: self.registry.close_stream(name, generation))
        try:
            while True:
                task = await mailbox.get()
                if task is END_OF_STREAM:
                    return
                yield task
        finally:
            self.registry.close_stream(name, generation)

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


class UploadIdle(Exception):
    """The sender sent nothing for FEDTIER_MAX_UPLOAD_IDLE_SECONDS."""


def loop_chunks(chunks: AsyncIterator[Chunk], loop: asyncio.AbstractEventLoop) -> Iterator[Chunk]:
    """An upload's chunks, read on the server's loop, as the synchronous iterator the receiver
    takes (it runs on a pool thread). An upload holds that thread, and its sender's upload
    slot, for as long as its stream stays open, so a sender that stops sending for
    FEDTIER_MAX_UPLOAD_IDLE_SECONDS ends it (UploadIdle): the receiver deletes its partial
    file and the slot is free again."""
    async def next_chunk() -> Chunk | None:
        bounds = limits.current()
        try:
            return await asyncio.wait_for(anext(chunks), bounds.upload_idle_seconds)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise UploadIdle(f"nothing received for {bounds.describe('upload_idle_seconds')}") from None

    while True:
        chunk = asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()
        if chunk is None:
            return
        yield chunk


class ModelTransferServicer(rpc.ModelTransferServicer):
    def __init__(self, cache: ModelCache,
                 check: Callable[[pb.TransferHeader], UpdateCheck | None] | None = None,
                 auth: IdentityInterceptor = OPEN, metrics: CombinerMetrics | None = None,
                 executor: Executor | None = None) -> None:
        self.cache = cache
        self.metrics = metrics or CombinerMetrics()
        self.check = check  # the runner's: updates of a running round are checked as they arrive
        self.auth = auth  # the reducer's calls choose model ids; clients' get one, recorded as theirs
        self.executor = executor  # where an upload is written (None: the loop's default pool)

    async def UploadModel(self, request_iterator: AsyncIterator[Chunk],
                          context: grpc.aio.ServicerContext) -> pb.UploadResponse:
        try:
            may_name, uploader = self.auth.may_name_caller(context)
        except CredentialError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        loop = asyncio.get_running_loop()
        headers: list[pb.TransferHeader] = []
        try:
            return await loop.run_in_executor(self.executor, self._receive, loop_chunks(request_iterator, loop),
                                              headers, may_name, uploader)
        except _Refused as refused:
            await context.abort(refused.code, refused.message)

    def _receive(self, chunks: Iterator[Chunk], headers: list[pb.TransferHeader], may_name: bool,
                 uploader: str | None) -> pb.UploadResponse:
        counted = counting(chunks, self.metrics.model_bytes.labels("received").inc, headers)

        def refused(reason: str) -> None:  # counted as an update refused unless the reducer's push
            if not (headers and headers[0].model_id):
                self.metrics.reject("upload", reason)

        try:
            received = self.cache.receive(counted, self.check, may_name=may_name, uploader=uploader)
        except NotTheUploader as exc:
            log.warning("upload refused: %s", exc)
            refused("not_uploader")
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        except UploadRefused as exc:  # at the header: nothing was written
            log.warning("upload refused: %s", exc)
            refused("over_bound" if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED else "no_task")
            raise _Refused(exc.code, f"upload refused: {exc}") from None
        except UploadIdle as exc:  # the receiver has deleted its partial file
            log.warning("upload cancelled: %s", exc)
            refused("transfer")
            raise _Refused(grpc.StatusCode.CANCELLED, f"upload cancelled: {exc}") from None
        except (TransferError, ValueError) as exc:
            log.warning("upload rejected: %s", exc)
            refused("transfer")
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"upload rejected: {exc}") from None
        finally:
            counted.close()  # a refused upload's unread chunks are not read
        return pb.UploadResponse(model_id=received.path.name, size=received.size, sha256=received.sha256,
                                 xxh3=received.xxh3)

    async def DownloadModel(self, request: pb.DownloadRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[Chunk]:
        refused = own_name_refusal(self.auth, request.client_name, context)
        if refused is not None:
            await context.abort(*refused)
        try:
            chunks = self.cache.chunks(request.model_id)
        except (KeyError, ValueError):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id!r} is not on this combiner")
        # each chunk is read from disk on the pool, and sent from the loop: a client that reads
        # slowly holds a coroutine, not one of the pool's threads
        counted = counting(chunks, self.metrics.model_bytes.labels("sent").inc)
        loop = asyncio.get_running_loop()
        try:
            while (chunk := await loop.run_in_executor(self.executor, next, counted, None)) is not None:
                yield chunk
        finally:
            try:
                counted.close()
            except ValueError:  # cancelled while the pool was reading its next chunk: that read ends it
                pass


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlServicer(rpc.ControlServicer):
    def __init__(self, name: str, registry: ClientRegistry, runner: RoundRunner,
                 executor: Executor | None = None) -> None:
        self.name = name
        self.registry = registry
        self.runner = runner
        self.executor = executor  # where a round runs (None: the loop's default pool)
        self.reducer_url = ""
        self.instance_id = uuid.uuid4().hex  # per process: the reducer sees a restart by its change

    def Configure(self, request: pb.ConfigureRequest, context: grpc.ServicerContext) -> pb.Ack:
        self.reducer_url = request.reducer_url
        return pb.Ack(ok=True)

    async def StartRound(self, request: pb.RoundRequest, context: grpc.aio.ServicerContext) -> pb.RoundResult:
        # if the reducer dies or gives up, nobody will collect this round: stop it so the
        # combiner is free for the next one (after a normal return this finds nothing running)
        context.add_done_callback(lambda _: self.runner.stop(request.round_id, "the reducer went away"))
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.runner.run, request)

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
