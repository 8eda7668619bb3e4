"""Choose storage backends from Settings: the services when configured, else embedded."""
from __future__ import annotations

import logging

from fedtier.config import Settings
from fedtier.storage.local import LocalModelStore
from fedtier.storage.model_store import ModelStore
from fedtier.storage.state_store import StateStore

log = logging.getLogger(__name__)


def model_store_from_settings(settings: Settings) -> ModelStore:
    if settings.uses_minio:
        from fedtier.storage.s3 import S3ModelStore

        endpoint = f"{settings.minio_host}:{settings.minio_port}"
        log.info("model store: MinIO/S3 at %s, bucket %s", endpoint, settings.minio_bucket)
        return S3ModelStore(endpoint, settings.minio_access_key, settings.minio_secret_key,
                            settings.minio_bucket, secure=settings.minio_secure)
    root = settings.data_dir / "model_store"
    log.info("model store: local directory %s", root.resolve())
    return LocalModelStore(root)


def state_store_from_settings(settings: Settings) -> StateStore:
    if settings.uses_mongo:
        from fedtier.storage.mongo import MongoStateStore

        log.info("state store: MongoDB at %s:%d, database %s", settings.mongo_host, settings.mongo_port,
                 settings.alliance_uid)
        return MongoStateStore.connect(settings.mongo_host, settings.mongo_port,
                                       username=settings.mongo_user or None,
                                       password=settings.mongo_password or None,
                                       database=settings.alliance_uid)
    path = settings.data_dir / f"{settings.alliance_uid}.sqlite"
    log.info("state store: SQLite %s", path.resolve())
    from fedtier.storage.sqlite import SQLiteStateStore

    return SQLiteStateStore(path)
