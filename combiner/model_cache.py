"""The combiner's working set of model files, addressed by model id.

It holds the global model the reducer pushed, client updates until they are folded
in, and the combiner models until the reducer fetches them. Files arrive through the
verified chunk stream (fedtier.transport.streams) and are never overwritten: an id,
once present, always names the same bytes.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import grpc

from fedtier import limits
from fedtier.aggregators.update_check import UpdateCheck
from fedtier.ids import check_model_id, new_id
from fedtier.limits import Limits
from fedtier.proto import fedtier_pb2 as pb
from fedtier.transport.streams import Digests, Received, TransferError, file_chunks, receive_to_file
from fedtier.transport.wire import Chunk

log = logging.getLogger(__name__)


class NotTheUploader(TransferError):
    """An upload's header names another client than the sender's verified credential."""


@dataclass
class Held:
    """What the cache knows of one model file besides its bytes."""

    uploader: str | None = None       # the client that uploaded it
    sha256: str = ""                  # its content hash, verified or computed here: adoption trusts it
    xxh3: str = ""                    # its checksum as it arrived or was first sent: serving never re-reads it
    check: UpdateCheck | None = None  # the check its bytes went through on arrival


class UploadRefused(TransferError):
    """An upload refused at its header, before a byte of it is written; ``code`` is the
    gRPC status to answer with (RESOURCE_EXHAUSTED for a bound, FAILED_PRECONDITION when
    the sender has no open training task)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ModelCache:
    def __init__(self, root: Path, max_model_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_model_bytes = max_model_bytes  # None: FEDTIER_MAX_MODEL_BYTES (fedtier/limits.py)
        self._held: dict[str, Held] = {}
        self._receiving: Counter[str] = Counter()  # client uploads in flight, by sender
        self._lock = threading.Lock()
        # a process that died mid-transfer left its partial files: nothing will finish them
        for stray in self.root.glob(".*.part"):
            stray.unlink(missing_ok=True)

    def path(self, model_id: str) -> Path:
        return self.root / check_model_id(model_id)

    def exists(self, model_id: str) -> bool:
        return self.path(model_id).is_file()

    def new_id(self) -> str:
        return new_id()

    def held(self, model_id: str) -> Held:
        """A copy of what is known of ``model_id`` (empty if nothing is)."""
        with self._lock:
            return replace(self._held.get(model_id) or Held())

    def receive(self, chunks: Iterable[Chunk],
                check: Callable[[pb.TransferHeader], UpdateCheck | None] | None = None,
                may_name: bool = True, uploader: str | None = None) -> Received:
        """Store an uploaded model; the header's id is used if given, else one is made.

        ``check(header)`` may return an UpdateCheck to run on the bytes as they arrive (an
        update in a training round); it is kept with the model for ``update_check``.
        ``may_name=False`` (a client's call, in a network with tokens) refuses a header that
        names the id: trail ids are public once committed, and a client that took the next
        global model's id before the reducer's push would have its bytes served as that model.
        ``uploader``: the sender's verified name (None: identities are not checked); the
        header must give that name, and the model is recorded as that client's.

        An upload without an id is a client's update. ``check(header)`` admits it, or refuses
        it by raising UploadRefused (no open training task, larger than the round's model
        allows); without a ``check`` (no round running) every client upload is refused. A
        client may have at most FEDTIER_MAX_UPLOADS_PER_TASK uploads here at once, in flight
        or held until reported. All of it is decided on the header, before a byte is written."""
        bounds = limits.current()
        max_size = self.max_model_bytes or bounds.model_bytes
        sender: list[str] = []  # the client whose upload slot this transfer holds, once admitted

        def destination(header: pb.TransferHeader) -> Path:
            if uploader is not None and header.client_name != uploader:
                raise NotTheUploader(f"client_name {header.client_name!r} is not the name in your credential "
                                     f"({uploader!r})")
            if header.size > max_size:
                raise UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"the upload declares {header.size} bytes, over "
                                    + (f"this combiner's limit of {max_size} bytes" if self.max_model_bytes
                                       else bounds.describe("model_bytes")))
            if header.model_id and not may_name:
                raise TransferError("only the reducer names models: send the upload without a model id")
            if not header.model_id:
                self._reserve(header.client_name, bounds)
                sender.append(header.client_name)
            model_id = header.model_id or self.new_id()
            target = self.path(model_id)
            if target.exists():
                raise TransferError(f"model {model_id} already exists and is never overwritten")
            return target

        def inspect(header: pb.TransferHeader) -> UpdateCheck | None:
            if header.model_id:
                return None  # the reducer's push: the global model, checked by the reducer
            if check is None:
                raise UploadRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                    "this combiner takes a client's upload only for an open training task")
            return check(header)

        # the cache is scratch: the reducer keeps the trail, a client its update. A stated
        # sha256 is verified: adopt() links by it, so a claim alone must never name a model
        try:
            received = receive_to_file(chunks, destination, max_size=max_size, durable=False,
                                       inspect=inspect, verify_sha256=True)
            with self._lock:
                self._held[received.path.name] = Held(uploader=received.header.client_name,
                                                      sha256=received.sha256, xxh3=received.xxh3,
                                                      check=received.inspector)
        finally:
            if sender:
                with self._lock:
                    self._receiving[sender[0]] -= 1
                    if self._receiving[sender[0]] <= 0:
                        del self._receiving[sender[0]]
        return received

    def _reserve(self, client: str, bounds: Limits) -> None:
        """Take one of ``client``'s upload slots, or refuse: uploads held (not yet reported)
        and in flight count, so neither many parallel streams nor uploads never reported
        fill the disk."""
        with self._lock:
            held = sum(1 for known in self._held.values() if known.uploader == client)
            if held + self._receiving[client] >= bounds.uploads_per_task:
                raise UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"{client} has {held} uploads held and {self._receiving[client]} in flight "
                                    f"here, at {bounds.describe('uploads_per_task')}: report one first")
            self._receiving[client] += 1

    def adopt(self, model_id: str, sha256: str, size: int) -> bool:
        """Hold a model this cache already has (same sha256 and size) under ``model_id`` too.

        With one combiner, the global model a round commits is this combiner's aggregate
        (hashed when the reducer fetched it), so the next round's push would send back the
        bytes it already holds: a hard link replaces the transfer, its checksum and its write.
        False means "send it": no such model, or ``model_id`` names other bytes.
        """
        target = self.path(model_id)
        if not sha256:
            return False  # nothing to match: an empty hash names no bytes
        with self._lock:
            known = self._held.get(model_id)
            if known and known.sha256 == sha256 and target.is_file() and target.stat().st_size == size:
                return True  # already adopted or uploaded
            sources = [(held_id, held.xxh3) for held_id, held in self._held.items() if held.sha256 == sha256]
        for source, xxh3 in sources:
            try:
                if self.path(source).stat().st_size != size:
                    continue
                os.link(self.path(source), target)  # fails if the id exists: never overwritten
            except OSError as exc:  # discarded meanwhile, the id taken, or no hard links here
                log.debug("could not adopt %s as %s: %s", source, model_id, exc)
                continue
            with self._lock:
                self._held[model_id] = Held(sha256=sha256, xxh3=xxh3)
            log.info("model %s adopted from %s (same sha256): not transferred again", model_id, source)
            return True
        return False

    def update_check(self, model_id: str) -> UpdateCheck | None:
        """The check this model's bytes went through as they arrived, if any."""
        return self.held(model_id).check

    def uploader(self, model_id: str) -> str | None:
        return self.held(model_id).uploader

    def chunks(self, model_id: str) -> Iterator[Chunk]:
        path = self.path(model_id)
        if not path.is_file():
            raise KeyError(model_id)
        known = self.held(model_id)
        # A model that arrived is sent with the checksum it arrived with. One written here (an
        # aggregate) has its content hash and checksum computed while it is first sent, and
        # kept for later requests: no extra read of the whole file before sending.
        return file_chunks(path, model_id=model_id, sha256=known.sha256 or None, xxh3=known.xxh3 or None,
                           on_digest=None if known.xxh3 else lambda digests: self._remember(model_id, digests))

    def _remember(self, model_id: str, digests: Digests) -> None:
        with self._lock:
            if self.path(model_id).is_file():  # not discarded while it was being sent
                held = self._held.setdefault(model_id, Held())
                held.sha256, held.xxh3 = digests.sha256, digests.xxh3

    def discard(self, model_id: str) -> None:
        with self._lock:
            self._held.pop(model_id, None)
        self.path(model_id).unlink(missing_ok=True)

    def prune(self, keep: set[str]) -> int:
        """Delete every model not in ``keep``; called between rounds to bound disk use."""
        removed = 0
        for path in self.root.iterdir():
            if path.is_file() and path.name not in keep and not path.name.startswith("."):
                self.discard(path.name)
                removed += 1
        return removed
