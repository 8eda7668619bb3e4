"""ModelStore on a local directory: the embedded default, no services needed.

Layout under ``root``::

    models/<id>/data        the blob (read-only)
    models/<id>/meta.json   {"model_id", "sha256", "size"}
    tmp/<random>/           models being written

Why a directory per model, published by renaming it into ``models/``:
a model must become visible only when complete *and* with its hash, and two
writers of the same id must never overwrite each other. A hash sidecar linked
next to the blob cannot give both: writers racing on one id would overwrite
each other's sidecar before one of them wins the link. Renaming a finished,
non-empty directory is atomic, and POSIX ``rename(2)`` refuses to replace a
non-empty directory (Windows refuses any existing target), so exactly one
writer wins and its blob and hash arrive together.

``put_file(..., link=True)`` puts the blob in the work directory by hard link
instead of a copy when the source is on the same filesystem: for a gigabyte
model that saves writing (and, with a known sha256, reading) a gigabyte. The
rest of the path is the same: the shared inode is made read-only and fsynced,
then the directory is published by the same rename.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat as stat_mod
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .model_store import (
    DEFAULT_CHUNK_SIZE,
    ModelExistsError,
    ModelNotFoundError,
    ModelStore,
    ModelCorruptError,
    ModelStoreError,
    StoredModel,
    copy_hashing,
    fsync_dir,
    iter_file,
    named_os_errors,
    validate_model_id,
)

logger = logging.getLogger(__name__)

_DATA = "data"
_META = "meta.json"
_READ_ONLY = stat_mod.S_IRUSR | stat_mod.S_IRGRP | stat_mod.S_IROTH
# Temp dirs older than this can only be leftovers of a crashed writer.
STALE_TEMP_AGE_S = 24 * 3600


class LocalModelStore(ModelStore):
    """Models as files under ``root``; safe for several processes on one host."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._models = self.root / "models"
        self._tmp = self.root / "tmp"
        with named_os_errors(self.root, "creating the model store"):
            self._models.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_temp()

    def __repr__(self) -> str:
        return f"LocalModelStore({str(self.root)!r})"

    # ---- writes ---------------------------------------------------------

    def _put_stream(self, model_id: str, chunks: Iterable[bytes]) -> StoredModel:
        def write(data_path: Path) -> tuple[str, int]:
            with open(data_path, "xb") as out:
                sha256, size = copy_hashing(chunks, out, model_id)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(data_path, _READ_ONLY)
            return sha256, size

        return self._put(model_id, write)

    def _put_file(
        self, model_id: str, path: Path, *, sha256: str | None = None, link: bool = False
    ) -> StoredModel:
        if sha256 is None and not link:
            return self._put_stream(model_id, iter_file(path))

        def write(data_path: Path) -> tuple[str, int]:
            if link and self._link(path, data_path, model_id):
                return self._adopt_linked(data_path, sha256)
            return self._copy(path, data_path, sha256, model_id)

        return self._put(model_id, write)

    def _put(self, model_id: str, write_data: Callable[[Path], tuple[str, int]]) -> StoredModel:
        """Have write_data put a durable, read-only blob in a fresh work directory
        and return its (sha256, size); record them and publish the directory."""
        target = self._models / model_id
        if self._exists(model_id):
            raise ModelExistsError(f"model {model_id!r} already exists in {self.root}")
        # A full disk, a quota, a read-only remount: named as this store's failure
        # (StorageFullError / StorageIOError), and the work directory goes with it.
        with named_os_errors(self.root, f"writing model {model_id}"):
            work = Path(tempfile.mkdtemp(dir=self._tmp, prefix=f"{model_id}."))
            try:
                sha256, size = write_data(work / _DATA)
                stored = StoredModel(model_id=model_id, sha256=sha256, size=size)
                with open(work / _META, "x", encoding="utf-8") as meta:
                    json.dump({"model_id": model_id, "sha256": sha256, "size": size}, meta)
                    meta.flush()
                    os.fsync(meta.fileno())
                fsync_dir(work)
                self._publish(work, target, model_id)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)  # with a link: only the store's name goes
                raise
        fsync_dir(self._models)
        logger.info("stored model %s (%d bytes, sha256 %s)", model_id, size, sha256)
        return stored

    def _link(self, source: Path, data_path: Path, model_id: str) -> bool:
        """Take the source by hard link, read-only; False (nothing left at data_path)
        if that is not possible here, e.g. across filesystems: the caller copies."""
        try:
            os.link(source, data_path)
        except OSError as exc:  # EXDEV, EPERM, a filesystem without hard links...
            logger.debug("model %s: cannot hard-link %s into %s (%s); copying it",
                         model_id, source, self.root, exc)
            return False
        try:
            # The inode's mode: the source name becomes read-only too, which is
            # what the caller agreed to by giving the file up.
            os.chmod(data_path, _READ_ONLY)
        except OSError as exc:  # e.g. linked someone else's file: a copy is ours to protect
            os.unlink(data_path)
            logger.debug("model %s: cannot make linked %s read-only (%s); copying it",
                         model_id, source, exc)
            return False
        return True

    @staticmethod
    def _adopt_linked(data_path: Path, sha256: str | None) -> tuple[str, int]:
        """Make the linked blob durable (the caller may have written it without
        fsync) and return (sha256, size); hash it only if the caller did not
        give the hash. The size is the file's own, whatever the caller thinks."""
        with open(data_path, "rb") as fh:
            if sha256 is None:
                digest = hashlib.sha256()
                for chunk in iter(lambda: fh.read(DEFAULT_CHUNK_SIZE), b""):
                    digest.update(chunk)
                sha256 = digest.hexdigest()
            size = os.fstat(fh.fileno()).st_size
            os.fsync(fh.fileno())
        return sha256, size

    @staticmethod
    def _copy(source: Path, data_path: Path, sha256: str | None, model_id: str) -> tuple[str, int]:
        """Copy source to data_path, durable and read-only; hash on the way only
        if the caller did not give the hash."""
        with open(source, "rb") as src, open(data_path, "xb") as out:
            if sha256 is None:
                sha256, size = copy_hashing(iter(lambda: src.read(DEFAULT_CHUNK_SIZE), b""), out, model_id)
            else:
                expected = os.fstat(src.fileno()).st_size
                shutil.copyfileobj(src, out, DEFAULT_CHUNK_SIZE)
                size = out.tell()
                if size != expected:
                    raise ModelStoreError(
                        f"model {model_id!r}: source {source} changed size while it was stored "
                        f"({expected} -> {size} bytes); nothing was stored"
                    )
            out.flush()
            os.fsync(out.fileno())
        os.chmod(data_path, _READ_ONLY)
        return sha256, size

    def _publish(self, work: Path, target: Path, model_id: str) -> None:
        try:
            os.rename(work, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) or isinstance(exc, FileExistsError) \
                    or target.exists():
                raise ModelExistsError(
                    f"model {model_id!r} already exists in {self.root}"
                ) from exc
            raise ModelStoreError(f"could not publish model {model_id!r} in {self.root}: {exc}") from exc

    # ---- reads ----------------------------------------------------------

    def _stat(self, model_id: str) -> StoredModel:
        meta_path = self._models / model_id / _META
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {model_id!r} not found in {self.root}") from None
        except (OSError, ValueError) as exc:
            raise ModelStoreError(f"metadata of model {model_id!r} is unreadable: {exc}") from exc
        try:
            return StoredModel(model_id=model_id, sha256=str(meta["sha256"]), size=int(meta["size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStoreError(f"metadata of model {model_id!r} is invalid: {meta!r}") from exc

    def _exists(self, model_id: str) -> bool:
        return (self._models / model_id / _META).is_file()

    def _list_ids(self) -> Iterable[str]:
        ids = []
        for entry in os.scandir(self._models):
            try:
                validate_model_id(entry.name)
            except ValueError:
                continue
            if os.path.isfile(os.path.join(entry.path, _META)):
                ids.append(entry.name)
        return ids

    def _size_at_rest(self, stored: StoredModel) -> int | None:
        try:
            return os.stat(self._models / stored.model_id / _DATA).st_size
        except FileNotFoundError:
            raise ModelCorruptError(
                f"model {stored.model_id!r} is corrupt: metadata present but data file missing"
            ) from None

    def _raw_chunks(self, stored: StoredModel, chunk_size: int) -> Iterator[bytes]:
        path = self._models / stored.model_id / _DATA
        with named_os_errors(self.root, f"reading model {stored.model_id}"):
            try:
                fh = open(path, "rb")
            except FileNotFoundError:
                raise ModelCorruptError(
                    f"model {stored.model_id!r} is corrupt: metadata present but data file missing"
                ) from None
            with fh:
                while True:
                    chunk = fh.read(chunk_size)
                    if not chunk:
                        return
                    yield chunk

    # ---- housekeeping ---------------------------------------------------

    def _sweep_stale_temp(self) -> None:
        """Reclaim space from writers that crashed before publishing.

        Only old entries are removed, so a writer in another process that is
        still busy is left alone.
        """
        cutoff = time.time() - STALE_TEMP_AGE_S
        for entry in os.scandir(self._tmp):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    logger.info("removed stale temporary model data %s", entry.path)
            except OSError:
                continue
