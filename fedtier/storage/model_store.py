"""The ModelStore contract shared by every model storage backend.

Models are the unit of exchange in the network: every round produces new ones
and the reducer's trail refers to them by id forever after. That gives the
store two hard rules that every backend must keep and that this base class
enforces where it can, so backends cannot drift apart:

* immutability: an id is written once; a second write is an error, never an
  overwrite, and a failed write leaves nothing visible under the id;
* integrity: the sha256 recorded at write time is checked on every read, so a
  model corrupted at rest is reported instead of being trained on, and a
  stream of it stops short of its last chunk (iter_chunks), so no consumer
  receives a damaged model whole;
* failures are the store's: an OSError of the medium (a full disk...) comes
  out as StorageIOError/StorageFullError naming the store and the model.

Models can be many GiB, so nothing here holds a whole model in memory: data
moves through iterators of bounded chunks and temporary files.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1 << 20
_MODEL_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredModel:
    """What a store knows about a published model; enough to verify a copy."""

    model_id: str
    sha256: str
    size: int


class ModelStoreError(Exception):
    """Base class so callers can handle every storage failure in one place."""


class ModelNotFoundError(ModelStoreError, KeyError):
    """Raised for an unknown id; a KeyError too so mapping-style code works."""

    def __str__(self) -> str:
        # KeyError.__str__ quotes its argument as if it were a bare key; the
        # message is a sentence, so show it as one.
        return str(self.args[0]) if self.args else ""


class ModelExistsError(ModelStoreError):
    """Raised instead of overwriting: published models are immutable."""


class StorageUnavailableError(ModelStoreError):
    """Raised when the backing service cannot be reached even after retries."""


class ModelCorruptError(ModelStoreError):
    """The bytes at rest are not the ones recorded when the model was written.

    Its own class so that a server can tell damage in its store (a fault to
    report loudly, never to serve) from a store that is merely out of reach.
    """


class StorageIOError(ModelStoreError):
    """The medium under the store refused an operation (I/O error, read-only...).

    Carries the errno so callers can answer a full disk differently from a
    broken one without parsing messages.
    """

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class StorageFullError(StorageIOError):
    """No room left for the write: disk full, quota exceeded, file size limit."""


# errno values meaning "no room": what an operator fixes by freeing space.
_FULL_ERRNOS = frozenset(
    code for code in (getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EFBIG")) if code
)


def is_full(exc: OSError) -> bool:
    """Whether an OSError says the medium has no room for the write."""
    return exc.errno in _FULL_ERRNOS


def is_medium_failure(exc: BaseException) -> bool:
    """Whether an exception is the disk failing (full, read-only, I/O error) rather than a bug:
    what an operator must fix, so it is reported by name instead of as an internal error."""
    return isinstance(exc, OSError) and (is_full(exc) or exc.errno in (errno.EROFS, errno.EIO))


def describe_os_error(exc: OSError) -> str:
    """``no space left on device`` rather than ``[Errno 28] No space left on device: '/x'``."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc)


@contextmanager
def named_os_errors(where: object, action: str) -> Iterator[None]:
    """Turn an OSError from the medium into a StorageIOError that says where and what.

    A bare ``[Errno 28]`` tells an operator neither which store filled up nor
    what it was doing; callers also need one exception family (ModelStoreError)
    for every failure of the store, whatever layer it came from.
    """
    try:
        yield
    except OSError as exc:
        cls = StorageFullError if is_full(exc) else StorageIOError
        raise cls(f"{describe_os_error(exc)} under {where} ({action})", exc.errno) from exc


def validate_model_id(model_id: object) -> str:
    """Reject ids that could escape a directory or an object key namespace.

    The allowed alphabet is safe as a file name and as an S3 key on every
    platform, so both backends can use the id verbatim.
    """
    if not isinstance(model_id, str) or not _MODEL_ID_RE.fullmatch(model_id):
        raise ValueError(
            f"invalid model id {model_id!r}: expected 1-128 characters from [A-Za-z0-9._-]"
        )
    if model_id in (".", ".."):
        raise ValueError(f"invalid model id {model_id!r}: reserved path name")
    return model_id


def validate_sha256(sha256: object) -> str:
    """Normalise a hash a caller vouches for; a malformed one is the caller's bug.

    Refusing it before any byte is written keeps it from ever being recorded,
    where it would only surface later as a model reported corrupt.
    """
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256.lower()):
        raise ValueError(f"invalid sha256 {sha256!r}: expected 64 hexadecimal digits")
    return sha256.lower()


def iter_file(path: str | os.PathLike, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """Read a file lazily so callers never need it whole in memory."""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(chunk_size)
            if not chunk:
                return
            yield chunk


def as_bytes(chunk: object, model_id: str) -> bytes | bytearray | memoryview:
    """Fail loudly on a wrong chunk type before any of it is stored."""
    if not isinstance(chunk, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"model {model_id!r}: chunks must be bytes-like, got {type(chunk).__name__}"
        )
    return chunk


def copy_hashing(
    chunks: Iterable[bytes], dest: BinaryIO, model_id: str
) -> tuple[str, int]:
    """Write chunks to dest and return (sha256, size) computed on the way.

    Hashing while copying means a single pass over data that may be too large
    to read twice cheaply.
    """
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        data = as_bytes(chunk, model_id)
        digest.update(data)
        dest.write(data)
        size += len(data)
    return digest.hexdigest(), size


def _expecting_sha256(chunks: Iterable[bytes], sha256: str, model_id: str) -> Iterator[bytes]:
    """Pass chunks through, raising at their end if they do not hash to sha256.

    Raising from the iterator, before it is exhausted, is what makes
    put_stream publish nothing (see its contract).
    """
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(as_bytes(chunk, model_id))
        yield chunk
    if digest.hexdigest() != sha256:
        raise ModelStoreError(
            f"model {model_id!r}: the data has sha256 {digest.hexdigest()}, not the given "
            f"{sha256} (a wrong hash, or the source changed); nothing was stored"
        )


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry durable; best effort where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ModelStore(ABC):
    """Immutable, integrity-checked storage for model blobs keyed by id.

    Public methods validate arguments and enforce the read-side contract
    (hash verification, atomic destination files) once for all backends;
    backends implement the protected hooks.
    """

    # ---- public API -----------------------------------------------------

    def put_file(
        self,
        model_id: str,
        path: str | os.PathLike,
        *,
        sha256: str | None = None,
        link: bool = False,
    ) -> StoredModel:
        """Publish a file under a new id; the file may be larger than memory.

        Raises ModelExistsError if the id is taken (also with ``link``). The
        source file must not change while it is being stored.

        ``sha256`` is for a caller that already knows the file's hash because it
        verified it when the file arrived: hashing a gigabyte model again costs
        a full read of it. The store records the given hash (and the size of
        the data it actually stored) instead of computing it. That trust is
        safe because every read verifies the data against the recorded hash:
        a wrong hash is reported as corruption on the first read, never served
        as a good model, and a backend that reads the data anyway refuses it on
        the spot (ModelStoreError, nothing stored).

        ``link=True`` is for a caller that gives the file up: the store may then
        take it as it is (the local store: a hard link, on the same filesystem)
        instead of writing a second copy of it, and copies otherwise. The
        source then shares its data with the stored model, so the caller must
        not modify it afterwards; reading, renaming and unlinking it are fine
        and do not affect the stored model. The store makes the data read-only,
        which the source name sees too.
        """
        validate_model_id(model_id)
        if sha256 is not None:
            sha256 = validate_sha256(sha256)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model {model_id!r}: source file {os.fspath(path)!r} not found")
        return self._put_file(model_id, Path(path), sha256=sha256, link=link)

    def put_stream(self, model_id: str, chunks: Iterable[bytes]) -> StoredModel:
        """Publish a model produced incrementally (e.g. received over gRPC).

        If the iterator raises, nothing is published and the error propagates.
        """
        validate_model_id(model_id)
        return self._put_stream(model_id, chunks)

    def get_file(self, model_id: str, dest: str | os.PathLike) -> StoredModel:
        """Copy a model to dest, verified, appearing at dest only when complete.

        The copy is written to a temporary file next to dest and renamed over
        it, so a reader of dest never sees a partial or corrupt model; on a
        hash mismatch the temporary file is removed and ModelStoreError raised.
        """
        validate_model_id(model_id)
        dest_path = Path(dest)
        stored = self._checked_stat(model_id)
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=dest_path.parent, prefix=f".{dest_path.name}.", suffix=".part"
        )
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._verified_chunks(stored, DEFAULT_CHUNK_SIZE):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, dest_path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        logger.debug("model %s copied to %s", model_id, dest_path)
        return stored

    def iter_chunks(self, model_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """Stream a model, e.g. straight into an HTTP or gRPC response.

        The id is checked eagerly (ModelNotFoundError is raised by this call,
        not by the first next()), and so is the size of the data at rest where
        the backend can see it cheaply (ModelCorruptError: a truncated file is
        refused before any byte goes out). The hash can only be known at the
        end, so the last chunk is held back until the data has been verified:
        a corrupt model raises ModelCorruptError *instead of* its last chunk,
        and a consumer that counts bytes (HTTP Content-Length, a size in a
        header) sees fewer than it was promised whatever it does with the
        exception. Memory: one chunk more.
        """
        validate_model_id(model_id)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return self._verified_chunks(self._checked_stat(model_id), chunk_size)

    def stat(self, model_id: str) -> StoredModel:
        """Return id, sha256 and size; ModelNotFoundError for an unknown id."""
        validate_model_id(model_id)
        return self._stat(model_id)

    def exists(self, model_id: str) -> bool:
        """Cheap presence check; an existing id can no longer be written."""
        validate_model_id(model_id)
        return self._exists(model_id)

    def list_ids(self) -> list[str]:
        """All published ids, sorted, so listings are stable across backends."""
        return sorted(self._list_ids())

    # ---- backend hooks --------------------------------------------------

    def _put_file(
        self, model_id: str, path: Path, *, sha256: str | None = None, link: bool = False
    ) -> StoredModel:
        """Default: stream the file (no linking); a given sha256 is checked, as
        _put_stream hashes anyway, and a mismatch publishes nothing."""
        chunks = iter_file(path)
        if sha256 is not None:
            chunks = _expecting_sha256(chunks, sha256, model_id)
        return self._put_stream(model_id, chunks)

    @abstractmethod
    def _put_stream(self, model_id: str, chunks: Iterable[bytes]) -> StoredModel: ...

    @abstractmethod
    def _stat(self, model_id: str) -> StoredModel: ...

    def _exists(self, model_id: str) -> bool:
        try:
            self._stat(model_id)
        except ModelNotFoundError:
            return False
        return True

    @abstractmethod
    def _list_ids(self) -> Iterable[str]: ...

    @abstractmethod
    def _raw_chunks(self, stored: StoredModel, chunk_size: int) -> Iterator[bytes]:
        """Yield the stored bytes as-is; verification is done by the caller."""

    def _size_at_rest(self, stored: StoredModel) -> int | None:
        """The size of the stored data if the backend can tell without reading it
        and it may differ from the recorded one (a file beside its metadata);
        None where the recorded size *is* the data's size (an S3 object)."""
        return None

    # ---- shared helpers -------------------------------------------------

    def _checked_stat(self, model_id: str) -> StoredModel:
        stored = self.stat(model_id)
        actual = self._size_at_rest(stored)
        if actual is not None and actual != stored.size:
            logger.error("model %s is damaged in %r: %d bytes at rest, %d recorded",
                         model_id, self, actual, stored.size)
            raise ModelCorruptError(
                f"model {model_id!r} is corrupt: {actual} bytes at rest, {stored.size} recorded"
            )
        return stored

    def _verified_chunks(self, stored: StoredModel, chunk_size: int) -> Iterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        held: bytes | None = None  # the last chunk, released only once the data is verified
        for chunk in self._raw_chunks(stored, chunk_size):
            if not chunk:
                continue
            size += len(chunk)
            if size > stored.size:
                logger.error("model %s is damaged in %r: more than the recorded %d bytes at rest",
                             stored.model_id, self, stored.size)
                raise ModelCorruptError(
                    f"model {stored.model_id!r} is corrupt: stored data is larger than "
                    f"the recorded {stored.size} bytes"
                )
            digest.update(chunk)
            if held is not None:
                yield held
            held = chunk
        actual = digest.hexdigest()
        if size != stored.size or actual != stored.sha256:
            logger.error(
                "model %s is damaged in %r: sha256 %s size %d, expected %s size %d",
                stored.model_id, self, actual, size, stored.sha256, stored.size,
            )
            raise ModelCorruptError(
                f"model {stored.model_id!r} is corrupt: sha256 {actual} ({size} bytes) does not "
                f"match the recorded {stored.sha256} ({stored.size} bytes)"
            )
        if held is not None:
            yield held
