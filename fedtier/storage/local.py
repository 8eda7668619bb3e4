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
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat as stat_mod
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from .model_store import (
    ModelExistsError,
    ModelNotFoundError,
    ModelStore,
    ModelStoreError,
    StoredModel,
    copy_hashing,
    fsync_dir,
    validate_model_id,
)

logger = logging.getLogger(__name__)

_DATA = "data"
_META = "meta.json"
# Temp dirs older than this can only be leftovers of a crashed writer.
STALE_TEMP_AGE_S = 24 * 3600


class LocalModelStore(ModelStore):
    """Models as files under ``root``; safe for several processes on one host."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._models = self.root / "models"
        self._tmp = self.root / "tmp"
        self._models.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_temp()

    def __repr__(self) -> str:
        return f"LocalModelStore({str(self.root)!r})"

    # ---- writes ---------------------------------------------------------

    def _put_stream(self, model_id: str, chunks: Iterable[bytes]) -> StoredModel:
        target = self._models / model_id
        if self._exists(model_id):
            raise ModelExistsError(f"model {model_id!r} already exists in {self.root}")
        work = Path(tempfile.mkdtemp(dir=self._tmp, prefix=f"{model_id}."))
        try:
            data_path = work / _DATA
            with open(data_path, "xb") as out:
                sha256, size = copy_hashing(chunks, out, model_id)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(data_path, stat_mod.S_IRUSR | stat_mod.S_IRGRP | stat_mod.S_IROTH)
            stored = StoredModel(model_id=model_id, sha256=sha256, size=size)
            with open(work / _META, "x", encoding="utf-8") as meta:
                json.dump({"model_id": model_id, "sha256": sha256, "size": size}, meta)
                meta.flush()
                os.fsync(meta.fileno())
            fsync_dir(work)
            self._publish(work, target, model_id)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        fsync_dir(self._models)
        logger.info("stored model %s (%d bytes, sha256 %s)", model_id, size, sha256)
        return stored

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

    def _raw_chunks(self, stored: StoredModel, chunk_size: int) -> Iterator[bytes]:
        path = self._models / stored.model_id / _DATA
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise ModelStoreError(
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
