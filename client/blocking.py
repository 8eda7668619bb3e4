"""A task's thread calling out over its client's asyncio channel.

A client's connection lives on an event loop (a swarm runs all its clients on one, so an idle
client holds no thread), but a task is blocking work: the project's train and validate code,
a download into a file, an upload from one paced by the lab's conditions. So a task runs in
a thread of its own and reaches the combiner through these stubs: each call is run on the
loop and the thread waits for its answer. The task's code is the same as on a synchronous
channel; only the stubs differ.

When the connection goes away under a task (its channel closed: the client stops, or a lab
offline window begins) the call the thread waits on is cancelled, and the thread gets a
:class:`ConnectionClosed`, a ``grpc.RpcError`` like any other lost connection.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

import grpc

from fedtier.proto import fedtier_pb2 as pb
from fedtier.transport.wire import Chunk

T = TypeVar("T")


class ConnectionClosed(grpc.RpcError):
    """The client's channel was closed while a task's call was waiting on it."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "the client's connection was closed"


class LoopCalls:
    """Runs a coroutine on ``loop`` from another thread and waits for what it returns."""

    def __init__(self, loop: asyncio.AbstractEventLoop, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.loop = loop
        self.metadata = metadata

    def wait(self, make: Callable[[], Awaitable[T]]) -> T:
        """``make()`` is called on the loop (a grpc.aio call must be created there)."""

        async def run() -> T:
            return await make()

        try:
            return asyncio.run_coroutine_threadsafe(run(), self.loop).result()
        except (concurrent.futures.CancelledError, asyncio.CancelledError, grpc.aio.UsageError):
            raise ConnectionClosed() from None
        except RuntimeError as exc:  # the loop itself is closed: so is the connection
            if self.loop.is_closed():
                raise ConnectionClosed() from exc
            raise

    def open(self, start: Callable[[], T]) -> T:
        """``start()`` run on the loop and its result returned: a streaming call is created
        there (grpc.aio binds it to the loop it is made on) and then read or written from here."""

        async def run() -> T:
            return start()

        return self.wait(run)

    def cancel(self, call: Any) -> None:
        """Cancel ``call`` on the loop (a task that gives up a stream half way)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(call.cancel)


class BlockingStub:
    """The unary methods of an asyncio stub (``CombinerStub`` on an aio channel), called from a
    task's thread with the client's credential: ``stub.ReportUpdate(request, timeout=...)``."""

    def __init__(self, stub: Any, calls: LoopCalls) -> None:
        self._stub = stub
        self._calls = calls

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        calls = self._calls

        def call(request: Any, timeout: float | None = None) -> Any:
            return calls.wait(lambda: method(request, timeout=timeout, metadata=calls.metadata))

        return call


class BlockingTransfer:
    """``ModelTransferStub``'s two streams on an aio channel, called from a task's thread."""

    def __init__(self, transfer: Any, calls: LoopCalls) -> None:
        self._transfer = transfer
        self._calls = calls

    def DownloadModel(self, request: pb.DownloadRequest) -> Iterator[Chunk]:  # noqa: N802 (the stub's name)
        calls = self._calls
        call = calls.open(lambda: self._transfer.DownloadModel(request, metadata=calls.metadata))
        finished = False
        try:
            while True:
                chunk = calls.wait(call.read)
                if chunk is grpc.aio.EOF:
                    finished = True
                    return
                yield chunk
        finally:
            if not finished:  # the reader gave up (a bad chunk, too large): end the stream too
                calls.cancel(call)

    def UploadModel(self, chunks: Iterable[Chunk]) -> pb.UploadResponse:  # noqa: N802 (the stub's name)
        calls = self._calls
        call = calls.open(lambda: self._transfer.UploadModel(metadata=calls.metadata))
        try:
            for chunk in chunks:  # produced here, in the task's thread: a throttle sleeps here
                calls.wait(lambda chunk=chunk: call.write(chunk))
            calls.wait(call.done_writing)
            return calls.wait(lambda: call)
        except BaseException:
            calls.cancel(call)
            raise


__all__ = ["BlockingStub", "BlockingTransfer", "ConnectionClosed", "LoopCalls"]
