"""ModelStore on an S3-compatible service (MinIO in deployments).

Each model is one object whose key is the model id, with its sha256 stored as
user metadata (``x-amz-meta-sha256``), so the hash travels with the data.

Design notes:

* Atomicity comes from S3 itself: a single PUT becomes visible whole or not
  at all, and a multipart upload is invisible until it is completed (minio
  aborts it on failure; an upload whose abort also fails stays invisible and
  should be reaped by a bucket lifecycle rule).
* The hash must be known when the upload starts (metadata is sent first), and
  a retry must be able to replay the data. ``put_stream`` therefore spools the
  incoming chunks to a temporary file (bounded memory, disk-sized models)
  before uploading it; ``put_file`` hashes the source first and uploads it
  directly; given a sha256 the caller vouches for, it skips that pass: the
  upload hashes what it sends anyway, and a mismatch withdraws the object
  (``link`` means nothing here: the data has to be sent). Uploads of more
  than one part go multipart, reading one part at a time, so memory stays
  around ``part_size`` whatever the model size.
* Immutability: the id is checked for existence right before uploading. Plain
  S3 has no portable "create only if absent" for multipart uploads, so two
  writers racing on the same id inside that window can both upload and the
  later one wins. Ids are normally unique per writer (the combiner or reducer
  that produced the model), which keeps that race theoretical.
* Transient failures (connection errors, HTTP 5xx, throttling) are retried
  with exponential backoff, then reported as StorageUnavailableError naming
  the endpoint. minio's own urllib3 retries are turned off so the retry
  budget given to this class is the whole budget.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from .model_store import (
    ModelExistsError,
    ModelNotFoundError,
    ModelStore,
    ModelStoreError,
    StorageFullError,
    StorageUnavailableError,
    StoredModel,
    copy_hashing,
    iter_file,
    named_os_errors,
    validate_model_id,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

SHA256_META = "sha256"
_SHA256_HEADER = "x-amz-meta-sha256"
_MIN_PART_SIZE = 5 << 20
_MAX_PARTS = 10_000
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}
# The service has no room: retrying cannot help, an operator must free space.
_FULL_CODES = {"XMinioStorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded"}
_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
    "RequestTimeTooSkewed", "XMinioServerNotInitialized",
}


class _HashingReader:
    """File wrapper that hashes what minio actually reads for the upload.

    Lets put_file notice that the source changed between hashing it and
    uploading it, which would otherwise publish data that fails verification.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


class S3ModelStore(ModelStore):
    """Models as objects in one bucket of an S3-compatible service."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
        retries: int = 5,
        backoff_s: float = 0.5,
        *,
        part_size: int = 16 << 20,
        spool_dir: str | os.PathLike | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
    ) -> None:
        if retries < 0 or backoff_s < 0:
            raise ValueError("retries and backoff_s must not be negative")
        if part_size < _MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {_MIN_PART_SIZE} bytes (S3 minimum)")
        self.endpoint = endpoint
        self.bucket = bucket
        self.retries = retries
        self.backoff_s = backoff_s
        self.part_size = part_size
        self.spool_dir = spool_dir
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._ensure_bucket()

    def __repr__(self) -> str:
        return f"S3ModelStore(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    # ---- retry machinery ------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run fn, retrying transient failures with exponential backoff.

        Only whole operations are retried, which is safe because every
        operation here is idempotent (uploads replay from a file).
        """
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return fn()
            except Exception as exc:  # classified below
                if not _is_transient(exc):
                    raise
                if attempt + 1 >= attempts:
                    raise StorageUnavailableError(
                        f"S3 endpoint {self.endpoint} (bucket {self.bucket!r}) unavailable while "
                        f"{what} after {attempts} attempt(s): {_describe(exc)}"
                    ) from exc
                delay = self.backoff_s * (2 ** attempt)
                delay += random.uniform(0, delay / 4)  # de-synchronise many clients
                logger.warning(
                    "S3 endpoint %s failed while %s (attempt %d/%d): %s; retrying in %.2fs",
                    self.endpoint, what, attempt + 1, attempts, _describe(exc), delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _ensure_bucket(self) -> None:
        def ensure() -> None:
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                    logger.info("created bucket %s on %s", self.bucket, self.endpoint)
                except S3Error as exc:
                    # Another process created it first: that is what we wanted.
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        try:
            self._call(f"checking bucket {self.bucket!r}", ensure)
        except (S3Error, InvalidResponseError) as exc:
            raise ModelStoreError(
                f"cannot use bucket {self.bucket!r} on {self.endpoint}: {_describe(exc)}"
            ) from exc

    # ---- writes ---------------------------------------------------------

    def _put_file(
        self, model_id: str, path: Path, *, sha256: str | None = None, link: bool = False
    ) -> StoredModel:
        self._refuse_existing(model_id)
        if sha256 is not None:
            return self._upload(model_id, path, sha256, os.path.getsize(path), vouched=True)
        digest = hashlib.sha256()
        size = 0
        for chunk in iter_file(path):
            digest.update(chunk)
            size += len(chunk)
        return self._upload(model_id, path, digest.hexdigest(), size)

    def _put_stream(self, model_id: str, chunks: Iterable[bytes]) -> StoredModel:
        self._refuse_existing(model_id)
        where = self.spool_dir or tempfile.gettempdir()
        with named_os_errors(where, f"spooling model {model_id} for upload to {self.endpoint}/{self.bucket}"):
            fd, spool = tempfile.mkstemp(dir=self.spool_dir, prefix=f"fedtier-{model_id}.", suffix=".spool")
        try:
            with named_os_errors(where, f"spooling model {model_id} for upload to {self.endpoint}/{self.bucket}"):
                with os.fdopen(fd, "wb") as out:
                    sha256, size = copy_hashing(chunks, out, model_id)
            return self._upload(model_id, Path(spool), sha256, size)
        finally:
            os.unlink(spool)

    def _refuse_existing(self, model_id: str) -> None:
        if self._exists(model_id):
            raise ModelExistsError(
                f"model {model_id!r} already exists in bucket {self.bucket!r} on {self.endpoint}"
            )

    def _upload(
        self, model_id: str, path: Path, sha256: str, size: int, *, vouched: bool = False
    ) -> StoredModel:
        """Upload path as model_id with sha256 as its recorded hash; ``vouched``
        says the hash came from the caller rather than from hashing path here."""
        # Last check as late as possible: narrows (cannot close) the race
        # described in the module docstring.
        self._refuse_existing(model_id)
        part_size = max(self.part_size, -(-size // _MAX_PARTS))

        def upload() -> _HashingReader:
            with open(path, "rb") as fh:
                reader = _HashingReader(fh)
                self._client.put_object(
                    bucket_name=self.bucket, object_name=model_id, data=reader, length=size,
                    metadata={SHA256_META: sha256},
                    part_size=part_size,
                    num_parallel_uploads=1,  # one part in memory at a time
                )
                return reader

        try:
            reader = self._call(f"uploading model {model_id!r}", upload)
        except S3Error as exc:
            if exc.code in _FULL_CODES:
                raise StorageFullError(
                    f"no space left in bucket {self.bucket!r} on {self.endpoint} (writing model "
                    f"{model_id}): {_describe(exc)}"
                ) from exc
            raise ModelStoreError(
                f"upload of model {model_id!r} to {self.endpoint}/{self.bucket} failed: {_describe(exc)}"
            ) from exc
        except (InvalidResponseError, OSError) as exc:
            raise ModelStoreError(
                f"upload of model {model_id!r} to {self.endpoint}/{self.bucket} failed: {_describe(exc)}"
            ) from exc
        if reader.size != size or reader.digest.hexdigest() != sha256:
            # What was uploaded does not match the recorded hash: the source
            # changed under us, or the caller's hash is wrong. Withdraw it
            # rather than publish a corrupt model.
            self._call(f"removing inconsistent model {model_id!r}",
                       lambda: self._client.remove_object(self.bucket, model_id))
            if vouched:
                raise ModelStoreError(
                    f"model {model_id!r}: the data read from {path} has sha256 "
                    f"{reader.digest.hexdigest()} ({reader.size} bytes), not the given {sha256} "
                    f"({size} bytes): a wrong hash, or the source changed; nothing was stored"
                )
            raise ModelStoreError(
                f"source of model {model_id!r} changed while it was uploaded; nothing was stored"
            )
        logger.info("stored model %s on %s/%s (%d bytes, sha256 %s)",
                    model_id, self.endpoint, self.bucket, size, sha256)
        return StoredModel(model_id=model_id, sha256=sha256, size=size)

    # ---- reads ----------------------------------------------------------

    def _head(self, model_id: str) -> Any:
        """Object info, or None if there is no object under the id."""
        try:
            return self._call(f"reading metadata of model {model_id!r}",
                              lambda: self._client.stat_object(self.bucket, model_id))
        except S3Error as exc:
            if exc.code in _NOT_FOUND_CODES:
                return None
            raise ModelStoreError(f"cannot stat model {model_id!r}: {_describe(exc)}") from exc

    def _exists(self, model_id: str) -> bool:
        # Any object takes the id, even one without our metadata: writing
        # over it would still be an overwrite.
        return self._head(model_id) is not None

    def _stat(self, model_id: str) -> StoredModel:
        obj = self._head(model_id)
        if obj is None:
            raise ModelNotFoundError(
                f"model {model_id!r} not found in bucket {self.bucket!r} on {self.endpoint}"
            )
        sha256 = _header(obj.metadata, _SHA256_HEADER)
        if not sha256:
            raise ModelStoreError(
                f"model {model_id!r} in bucket {self.bucket!r} has no sha256 metadata: "
                "it was not written by fedtier or has been replaced"
            )
        return StoredModel(model_id=model_id, sha256=sha256.lower(), size=int(obj.size or 0))

    def _list_ids(self) -> Iterable[str]:
        def listing() -> list[str]:
            return [o.object_name for o in self._client.list_objects(self.bucket, recursive=True)]

        try:
            names = self._call(f"listing bucket {self.bucket!r}", listing)
        except S3Error as exc:
            raise ModelStoreError(f"cannot list bucket {self.bucket!r}: {_describe(exc)}") from exc
        ids = []
        for name in names:
            try:
                ids.append(validate_model_id(name))
            except ValueError:
                continue  # foreign object sharing the bucket
        return ids

    def _raw_chunks(self, stored: StoredModel, chunk_size: int) -> Iterator[bytes]:
        """Stream the object, resuming at the current offset after a drop.

        Resuming (instead of restarting) keeps a long download of a large
        model from being thrown away by one reset connection.
        """
        position = 0
        failures = 0
        while True:
            response = None
            try:
                response = self._call(
                    f"downloading model {stored.model_id!r}",
                    lambda: self._client.get_object(
                        bucket_name=self.bucket, object_name=stored.model_id, offset=position
                    ),
                )
                for chunk in response.stream(chunk_size):
                    position += len(chunk)
                    yield chunk
                return
            except S3Error as exc:
                if exc.code in _NOT_FOUND_CODES:
                    raise ModelStoreError(
                        f"model {stored.model_id!r} disappeared from bucket {self.bucket!r} while reading"
                    ) from exc
                if exc.code == "InvalidRange":  # offset past the end: object shrank
                    return  # verification reports the size mismatch
                raise ModelStoreError(f"cannot read model {stored.model_id!r}: {_describe(exc)}") from exc
            except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
                # Mid-stream drop; _call already handles failures to connect.
                failures += 1
                if failures > self.retries:
                    raise StorageUnavailableError(
                        f"S3 endpoint {self.endpoint} dropped the download of model "
                        f"{stored.model_id!r} {failures} times: {_describe(exc)}"
                    ) from exc
                logger.warning("download of model %s interrupted at byte %d (%s); resuming",
                               stored.model_id, position, _describe(exc))
                time.sleep(self.backoff_s * (2 ** (failures - 1)))
            finally:
                if response is not None:
                    response.close()
                    response.release_conn()


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError)):
        return True
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return exc.code not in _FULL_CODES and (exc.code in _TRANSIENT_CODES or status >= 500)
    if isinstance(exc, InvalidResponseError):
        # A proxy in front of the service answering 502/503 with HTML; the
        # status is only kept in a private attribute.
        return int(getattr(exc, "_code", 0) or 0) >= 500
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return f"{type(exc.reason).__name__}: {exc.reason}"
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _header(headers: object, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():  # type: ignore[call-overload]
        if key.lower() == name:
            return value
    return None
