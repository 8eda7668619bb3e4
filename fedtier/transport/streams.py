"""Models travel as header, data chunks, trailer (see ModelChunk in fedtier.proto).

Both directions (client/reducer upload, download) use these two functions, so the
integrity rules live in one place: the receiver writes to a temporary file, checks
the byte count against the header and the XXH3-128 checksum against the trailer, and
only then renames the file into place. A truncated or corrupted stream leaves nothing
behind.

Two hashes, for two jobs. The checksum guards one transfer against damage: XXH3-128 at
6,960 MiB/s on this project's 2-core machine against sha256's 1,347 MiB/s, so a 1 GiB
model costs each end 0.15 s instead of 0.76 s (docs/performance.md, issue 7). The
content hash, sha256, names a model in the trail and in the store; it is computed
where a model is made (the store, a combiner's aggregate on its first way out) and
travels in the trailer, announced in the header. A receiver that keeps it as a fact
(``verify_sha256``: a combiner, which adopts models by it, so a client must not be able
to name its upload after the global model) hashes the stream and refuses a mismatch;
that costs only streams that state one (the reducer's pushes), never clients' updates.
The reducer takes its combiners' as stated. A sender passes the checksum recorded when
it received or made the file (the combiner's cache, the trail), so damage at rest on the
sender's disk is refused too.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import xxhash

from fedtier.proto import fedtier_pb2 as pb
from fedtier.transport.wire import Chunk, DataChunk

CHUNK_SIZE = 1 << 20  # 1 MiB: well under gRPC's 4 MiB default message limit
MAX_CHUNK_SIZE = 4 << 20
WRITEBACK_BYTES = 64 << 20  # a durable receive hands the disk each 64 MiB as it is written


class TransferError(ValueError):
    """The stream broke the header/data/trailer contract; the message says how."""


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def new_checksum() -> Any:
    """The transfer checksum's running state: ``update(bytes)``, then ``hexdigest()``."""
    return xxhash.xxh3_128()


def _hexdigest_of_file(path: str | os.PathLike, state: Any, block: int = 8 << 20) -> str:
    with open(path, "rb") as f:
        while data := f.read(block):
            state.update(data)
    return state.hexdigest()


def xxh3_file(path: str | os.PathLike) -> str:
    return _hexdigest_of_file(path, new_checksum())


def sha256_file(path: str | os.PathLike) -> str:
    return _hexdigest_of_file(path, hashlib.sha256())


@dataclass(frozen=True)
class Digests:
    """What a sender learned of a file while reading it out: content hash and checksum."""

    sha256: str
    xxh3: str


class Inspector(Protocol):
    """Sees every data byte of a transfer, in order, while it is in memory anyway."""

    def feed(self, data: memoryview) -> None: ...


@dataclass(frozen=True)
class Received:
    path: Path
    header: pb.TransferHeader
    size: int
    sha256: str  # as the sender's trailer stated it; "" when it stated none
    xxh3: str    # checked against every byte the file holds
    inspector: Any = None  # what ``inspect(header)`` returned, having seen every byte the file holds


def file_chunks(path: str | os.PathLike, model_id: str = "", client_name: str = "",
                chunk_size: int = CHUNK_SIZE, sha256: str | None = None, xxh3: str | None = None,
                on_digest: Callable[[Digests], None] | None = None) -> Iterator[Chunk]:
    """Stream a file as a header, data chunks (``DataChunk``: wire.py) and a trailer,
    computing what the trailer needs on the way so the file is read once.

    ``xxh3`` is the checksum recorded when this file was received or made: passed, it is
    sent as it is (and the receiver refuses the file if the bytes on disk changed since);
    else it is computed over the bytes read. ``sha256`` is sent when given. A sender that
    needs the content hash and does not know it passes ``on_digest``: both are computed
    on the way and handed to it before the trailer goes out, instead of one more read of
    the whole file before the first byte is sent.
    """
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
    size = os.path.getsize(path)
    yield pb.ModelChunk(header=pb.TransferHeader(model_id=model_id, size=size, client_name=client_name,
                                                 sha256_follows=bool(sha256) or on_digest is not None))
    checksum = None if xxh3 else new_checksum()
    content = hashlib.sha256() if on_digest is not None and not sha256 else None
    sent = 0
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            if checksum is not None:
                checksum.update(block)
            if content is not None:
                content.update(block)
            sent += len(block)
            yield DataChunk.encode(block)  # the wire bytes, without protobuf's copies (wire.py)
    if sent != size:
        raise TransferError(f"{path} changed size while being sent ({size} -> {sent} bytes)")
    if checksum is not None:
        xxh3 = checksum.hexdigest()
    if content is not None:
        sha256 = content.hexdigest()
    if on_digest is not None:
        on_digest(Digests(sha256=sha256 or "", xxh3=xxh3 or ""))
    yield pb.ModelChunk(trailer=pb.TransferTrailer(sha256=sha256 or "", xxh3=xxh3 or ""))


@functools.lru_cache(maxsize=1)
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, or None where there is none (not Linux/glibc)."""
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` to disk, without waiting.

    A file written at network pace and fsynced at the end otherwise reaches the disk only
    then (or when the kernel's dirty limits say so): the fsync waits for all of it, on the
    round's critical path. Started as the bytes arrive, the disk works during the transfer
    and the final fsync finds little left. Linux only (sync_file_range); elsewhere a no-op.
    """
    function = _sync_file_range()
    return function is not None and function(fd, offset, length, 2) == 0  # SYNC_FILE_RANGE_WRITE


def receive_to_file(chunks: Iterable[Chunk],
                    destination: Callable[[pb.TransferHeader], Path],
                    max_size: int | None = None, durable: bool = True,
                    inspect: Callable[[pb.TransferHeader], Inspector | None] | None = None,
                    verify_sha256: bool = False) -> Received:
    """Write a chunk stream to the path ``destination(header)`` chooses, verified and atomic.

    ``destination`` sees the header first so a receiver can pick the model id, or
    refuse (by raising) before a byte of data is written. ``durable=False`` skips the
    fsync for scratch copies that need not survive a crash (it costs a fifth to a half
    of the write time): the sender still holds the original. A durable receive starts
    the disk on each 64 MiB as it is written (``start_writeback``), so its fsync is short.

    ``inspect(header)`` may return an ``Inspector`` that is fed every data byte while it
    is in memory anyway (an aggregator's check of an update: update_check.py). It comes
    back as ``Received.inspector``: what it saw is what the file holds. It must not raise.

    ``verify_sha256`` hashes a stream whose header announces a sha256 and refuses it unless
    the trailer's agrees, so ``Received.sha256`` is a fact about the file; without it, it is
    what the sender stated.
    """
    stream = iter(chunks)
    first = next(stream, None)
    if first is None or first.WhichOneof("part") != "header":
        raise TransferError("stream must start with a header")
    header = first.header
    if header.size < 0 or (max_size is not None and header.size > max_size):
        raise TransferError(f"declared size {header.size} bytes is over the limit of {max_size}")
    target = Path(destination(header))
    inspector = inspect(header) if inspect is not None else None
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    checksum = new_checksum()
    content = hashlib.sha256() if verify_sha256 and header.sha256_follows else None
    received = handed_to_disk = 0
    trailer: pb.TransferTrailer | None = None
    try:
        with open(tmp, "wb") as f:
            for chunk in stream:
                kind = chunk.WhichOneof("part")
                if kind == "data":
                    if trailer is not None:
                        raise TransferError("data after trailer")
                    data = chunk.data  # a DataChunk's is a view; a ModelChunk's bytes field copies
                    received += len(data)
                    if received > header.size:
                        raise TransferError(f"more data than the declared {header.size} bytes")
                    checksum.update(data)
                    if content is not None:
                        content.update(data)
                    f.write(data)
                    if inspector is not None:
                        inspector.feed(data)
                    if durable and received - handed_to_disk >= WRITEBACK_BYTES:
                        f.flush()
                        start_writeback(f.fileno(), handed_to_disk, received - handed_to_disk)
                        handed_to_disk = received
                elif kind == "trailer" and trailer is None:
                    trailer = chunk.trailer
                else:
                    raise TransferError(f"unexpected {kind or 'empty'} message in the stream")
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if received != header.size:
            raise TransferError(f"stream ended after {received} of {header.size} bytes")
        if trailer is None:
            raise TransferError("stream ended without a trailer")
        if not trailer.xxh3:
            raise TransferError("the trailer carries no xxh3 checksum")
        if trailer.xxh3 != checksum.hexdigest():
            raise TransferError("xxh3 checksum mismatch: the data was damaged on the way or at the sender")
        if trailer.sha256 and not _SHA256_HEX.fullmatch(trailer.sha256):
            raise TransferError(f"the trailer's sha256 {trailer.sha256[:80]!r} is not 64 lowercase hex digits")
        if bool(trailer.sha256) != header.sha256_follows:
            raise TransferError("the header announced a sha256 the trailer does not state" if header.sha256_follows
                                else "the trailer states a sha256 the header did not announce")
        if content is not None and trailer.sha256 != content.hexdigest():
            raise TransferError("sha256 mismatch: the data is not the model the sender named")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Received(path=target, header=header, size=received, sha256=trailer.sha256, xxh3=trailer.xxh3,
                    inspector=inspector)
