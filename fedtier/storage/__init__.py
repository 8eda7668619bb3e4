"""Storage for fedtier: model blobs (ModelStore) and reducer state (StateStore).

Each interface has an embedded backend that needs no services (a directory,
an SQLite file) and a service backend for deployments (S3/MinIO, MongoDB).
Backends are chosen by configuration elsewhere; everything here takes
explicit arguments. The service backends are imported on first use, so a
process that only needs the embedded ones does not load minio or pymongo.
"""
from typing import Any

from .local import LocalModelStore
from .model_store import (
    ModelCorruptError,
    ModelExistsError,
    ModelNotFoundError,
    ModelStore,
    ModelStoreError,
    StorageFullError,
    StorageIOError,
    StorageUnavailableError,
    StoredModel,
    validate_model_id,
)
from .sqlite import SQLiteStateStore
from .state_store import (
    DocumentNotFoundError,
    DuplicateIdError,
    StateStore,
    StateStoreError,
)

__all__ = [
    "DocumentNotFoundError",
    "DuplicateIdError",
    "LocalModelStore",
    "ModelCorruptError",
    "ModelExistsError",
    "ModelNotFoundError",
    "ModelStore",
    "ModelStoreError",
    "MongoStateStore",
    "S3ModelStore",
    "SQLiteStateStore",
    "StateStore",
    "StateStoreError",
    "StorageFullError",
    "StorageIOError",
    "StorageUnavailableError",
    "StoredModel",
    "validate_model_id",
]

_LAZY = {"S3ModelStore": ".s3", "MongoStateStore": ".mongo"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
