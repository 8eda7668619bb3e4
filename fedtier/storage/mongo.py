"""StateStore on MongoDB: the service backend for a reducer in a deployment.

Each store collection is a MongoDB collection of the same name. A document is
stored with ``_id`` = its id (so MongoDB's primary key enforces uniqueness)
and a ``_seq`` taken from an atomic counter, because MongoDB has no reliable
insertion order of its own; both fields are stripped from every result.

Queries pin JSON types explicitly (``$type``) so that ``True`` never matches
``1``: real MongoDB already behaves that way, mongomock does not, and the
contract must hold on both.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import pymongo
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from .state_store import (
    DocumentNotFoundError,
    DuplicateIdError,
    StateStore,
    StateStoreError,
    check_collection,
    check_field_name,
    check_id,
    check_limit,
    check_offset,
    merge_fields,
    normalize_doc,
    normalize_where,
)

logger = logging.getLogger(__name__)

# Contains a dot, so it can never collide with a store collection ([a-z_]+).
COUNTERS = "fedtier.counters"
_PROJECTION = {"_id": 0, "_seq": 0}


def _mongo_where(where: dict[str, Any]) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for field, value in where.items():
        if field == "id":
            field = "_id"  # same value, but served by the primary key index
        if isinstance(value, bool):
            query[field] = {"$eq": value, "$type": "bool"}
        elif isinstance(value, (int, float)):
            query[field] = {"$eq": value, "$type": "number"}
        else:  # str, or None which matches missing or null natively
            query[field] = value
    return query


class MongoStateStore(StateStore):
    """State in a MongoDB database shared by reducer restarts and replicas."""

    def __init__(self, client: Any, database: str, *, owns_client: bool = False) -> None:
        """Use ``client`` (pymongo.MongoClient or compatible, e.g. mongomock).

        A client passed in stays the caller's: close() only closes clients
        this class created (see connect), unless owns_client is set.
        """
        self._client = client
        self._db = client[database]
        self.database = database
        self._owns_client = owns_client
        self._indexed: set[str] = set()
        self._index_lock = threading.Lock()
        self._closed = False

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        database: str = "fedtier",
        **kw: Any,
    ) -> "MongoStateStore":
        """Connect and ping, so a wrong address fails at startup, not mid-round."""
        kw.setdefault("serverSelectionTimeoutMS", 5000)
        client: pymongo.MongoClient = pymongo.MongoClient(
            host=host, port=port, username=username, password=password, **kw
        )
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            client.close()
            raise StateStoreError(f"cannot reach MongoDB at {host}:{port}: {exc}") from exc
        logger.info("connected to MongoDB at %s:%s, database %s", host, port, database)
        return cls(client, database, owns_client=True)

    def __repr__(self) -> str:
        return f"MongoStateStore(database={self.database!r})"

    # ---- plumbing -------------------------------------------------------

    @contextmanager
    def _errors(self, collection: str, action: str) -> Iterator[None]:
        if self._closed:
            raise StateStoreError(f"MongoDB state store {self.database!r} is closed")
        try:
            yield
        except DuplicateKeyError:
            raise
        except ConnectionFailure as exc:
            raise StateStoreError(
                f"MongoDB unavailable while {action} in collection {collection!r}: {exc}"
            ) from exc
        except PyMongoError as exc:
            raise StateStoreError(f"MongoDB error while {action} in collection {collection!r}: {exc}") from exc

    def _coll(self, collection: str) -> Any:
        coll = self._db[collection]
        if collection not in self._indexed:
            with self._index_lock:
                if collection not in self._indexed:
                    # Ordered scans by insertion without an in-memory sort.
                    coll.create_index([("_seq", pymongo.ASCENDING)])
                    self._indexed.add(collection)
        return coll

    def _next_seq(self) -> int:
        """Allocate the next insertion sequence number, atomically across processes."""
        for _ in range(3):
            try:
                counter = self._db[COUNTERS].find_one_and_update(
                    {"_id": "seq"}, {"$inc": {"value": 1}},
                    upsert=True, return_document=pymongo.ReturnDocument.AFTER,
                )
                return int(counter["value"])
            except DuplicateKeyError:
                continue  # two first-ever upserts raced; the counter exists now
        raise StateStoreError(f"could not allocate a sequence number in database {self.database!r}")

    def _insert_clean(self, collection: str, clean: dict) -> None:
        with self._errors(collection, f"inserting {clean['id']!r}"):
            coll = self._coll(collection)
            stored = {**clean, "_id": clean["id"], "_seq": self._next_seq()}
            coll.insert_one(stored)

    # ---- API ------------------------------------------------------------

    def insert(self, collection: str, doc: dict) -> None:
        check_collection(collection)
        clean = normalize_doc(doc, collection)
        try:
            self._insert_clean(collection, clean)
        except DuplicateKeyError:
            raise DuplicateIdError(
                f"document {clean['id']!r} already exists in collection {collection!r}"
            ) from None

    def get(self, collection: str, doc_id: str) -> dict | None:
        check_collection(collection)
        check_id(doc_id, collection)
        with self._errors(collection, f"reading {doc_id!r}"):
            return self._coll(collection).find_one({"_id": doc_id}, _PROJECTION)

    def _set(self, collection: str, doc_id: str, changes: dict) -> dict | None:
        if not changes:  # MongoDB rejects an empty $set
            return self.get(collection, doc_id)
        with self._errors(collection, f"updating {doc_id!r}"):
            return self._coll(collection).find_one_and_update(
                {"_id": doc_id}, {"$set": changes},
                projection=_PROJECTION, return_document=pymongo.ReturnDocument.AFTER,
            )

    def update(self, collection: str, doc_id: str, fields: dict) -> dict:
        check_collection(collection)
        check_id(doc_id, collection)
        doc = self._set(collection, doc_id, merge_fields(doc_id, fields, collection))
        if doc is None:
            raise DocumentNotFoundError(f"document {doc_id!r} not found in collection {collection!r}")
        return doc

    def upsert(self, collection: str, doc_id: str, fields: dict) -> dict:
        check_collection(collection)
        check_id(doc_id, collection)
        changes = merge_fields(doc_id, fields, collection)
        # Update first, insert if absent; an insert losing a race to another
        # writer turns back into an update. Avoids burning a sequence number
        # on every update of an existing document.
        for _ in range(3):
            doc = self._set(collection, doc_id, changes)
            if doc is not None:
                return doc
            clean = {"id": doc_id, **changes}
            try:
                self._insert_clean(collection, clean)
                return clean
            except DuplicateKeyError:
                continue
        raise StateStoreError(f"upsert of {doc_id!r} in collection {collection!r} kept racing with other writers")

    def delete(self, collection: str, doc_id: str) -> bool:
        check_collection(collection)
        check_id(doc_id, collection)
        with self._errors(collection, f"deleting {doc_id!r}"):
            return self._coll(collection).delete_one({"_id": doc_id}).deleted_count > 0

    def find(
        self,
        collection: str,
        where: dict | None = None,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict]:
        check_collection(collection)
        check_limit(limit, collection)
        check_offset(offset, collection)
        query = _mongo_where(normalize_where(where, collection))
        direction = pymongo.DESCENDING if descending else pymongo.ASCENDING
        if order_by is None:
            sort = [("_seq", direction)]
        else:
            check_field_name(order_by, collection)
            sort = [(order_by, direction), ("_seq", pymongo.ASCENDING)]
        if limit == 0:  # MongoDB reads limit(0) as "no limit"
            return []
        with self._errors(collection, "querying"):
            cursor = self._coll(collection).find(query, _PROJECTION).sort(sort)
            if offset:
                cursor = cursor.skip(offset)
            if limit is not None:
                cursor = cursor.limit(limit)
            return list(cursor)

    def count(self, collection: str, where: dict | None = None) -> int:
        check_collection(collection)
        query = _mongo_where(normalize_where(where, collection))
        with self._errors(collection, "counting"):
            return int(self._coll(collection).count_documents(query))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            self._client.close()
            logger.debug("closed MongoDB client for database %s", self.database)
