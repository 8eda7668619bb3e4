"""The StateStore contract: the reducer's small document database.

The reducer keeps combiners, clients, sessions, rounds, the model trail and
validations as JSON documents with a string ``"id"``. The same reducer code
must behave identically on the embedded SQLite backend and on MongoDB, so the
rules that could differ between them are fixed here, and each backend calls
these helpers instead of relying on its engine's defaults:

* documents are normalised through JSON, so what comes back is exactly what a
  JSON round-trip gives (tuples become lists, NaN is refused) on any backend;
* ``where`` is equality on top-level fields with JSON type awareness
  (``True`` does not match ``1``; ``None`` matches a missing field or null);
* without ``order_by`` results come in insertion order (newest first when
  ``descending``); with it, ties keep insertion order and missing/null values
  sort first (last when descending).
  Order between values of different JSON types is backend-defined.
* ``offset`` skips that many documents of that order before ``limit`` counts: in
  insertion order (append-only collections) it pages through a history whose
  indexes never change.
"""
from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from typing import Any

COLLECTION_RE = re.compile(r"[a-z_]+")
# Names a backend needs for its own bookkeeping (MongoDB's primary key and
# insertion sequence); a document field with these names would be lost.
RESERVED_FIELDS = frozenset({"_id", "_seq"})
_SCALARS = (str, int, float, bool, type(None))


class StateStoreError(Exception):
    """Base class so the reducer can handle every state failure in one place."""


class StateStoreFullError(StateStoreError):
    """The medium under the state store has no room (SQLite: database or disk is full)."""


class DuplicateIdError(StateStoreError):
    """Raised instead of overwriting: inserts never replace a document."""


class DocumentNotFoundError(StateStoreError, KeyError):
    """Raised by update of an unknown id; a KeyError for mapping-style code."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def check_collection(collection: object) -> str:
    """Collection names become table values / MongoDB names; keep them plain."""
    if not isinstance(collection, str) or not COLLECTION_RE.fullmatch(collection):
        raise ValueError(f"invalid collection name {collection!r}: expected [a-z_]+")
    return collection


def check_id(doc_id: object, collection: str) -> str:
    """Ids are the key on every backend, so they must be non-empty strings."""
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"collection {collection!r}: document id must be a non-empty string, got {doc_id!r}")
    return doc_id


def check_field_name(name: object, collection: str) -> str:
    """Field names used in queries are embedded in JSON paths / Mongo keys.

    Dots and a leading ``$`` would be read as paths or operators by MongoDB,
    and quotes or backslashes would break an SQLite JSON path.
    """
    if (
        not isinstance(name, str) or not name or name.startswith("$")
        or any(c in name for c in '."\\') or name in RESERVED_FIELDS
    ):
        raise ValueError(f"collection {collection!r}: invalid field name {name!r}")
    return name


def normalize_fields(fields: object, collection: str) -> dict[str, Any]:
    """Return a JSON-normalised deep copy of a field mapping.

    The copy means the store never shares objects with the caller, and the
    JSON round-trip makes both backends return identical values.
    """
    if not isinstance(fields, dict):
        raise TypeError(f"collection {collection!r}: expected a dict, got {type(fields).__name__}")
    for key in fields:
        check_field_name(key, collection)
    try:
        return json.loads(json.dumps(fields, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"collection {collection!r}: document is not JSON-serializable: {exc}") from exc


def normalize_doc(doc: object, collection: str) -> dict[str, Any]:
    """Validate a whole document for insert; it must carry its own id."""
    clean = normalize_fields(doc, collection)
    check_id(clean.get("id"), collection)
    return clean


def merge_fields(doc_id: str, fields: object, collection: str) -> dict[str, Any]:
    """Validate update fields; the id is the key and cannot be changed."""
    clean = normalize_fields(fields, collection)
    if "id" in clean and clean["id"] != doc_id:
        raise ValueError(
            f"collection {collection!r}: cannot change id of document {doc_id!r} to {clean['id']!r}"
        )
    clean.pop("id", None)
    return clean


def normalize_where(where: dict | None, collection: str) -> dict[str, Any]:
    """Only scalar equality is portable across backends; refuse the rest early."""
    if where is None:
        return {}
    if not isinstance(where, dict):
        raise TypeError(f"collection {collection!r}: where must be a dict, got {type(where).__name__}")
    for key, value in where.items():
        check_field_name(key, collection)
        if not isinstance(value, _SCALARS):
            raise ValueError(
                f"collection {collection!r}: where[{key!r}] must be a str, number, bool or None, "
                f"got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"collection {collection!r}: where[{key!r}] must be finite")
    return dict(where)


def check_limit(limit: int | None, collection: str) -> int | None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"collection {collection!r}: limit must be a non-negative int, got {limit!r}")
    return limit


def check_offset(offset: int, collection: str) -> int:
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"collection {collection!r}: offset must be a non-negative int, got {offset!r}")
    return offset


class StateStore(ABC):
    """Document storage for the reducer; see the module docstring for semantics."""

    @abstractmethod
    def insert(self, collection: str, doc: dict) -> None:
        """Add a new document; DuplicateIdError if its id is taken (never overwrites)."""

    def insert_new(self, collection: str, docs: list[dict]) -> int:
        """Insert each document whose id is not taken yet, skipping the others; returns how many
        were inserted. For records written many at once (a round's thousand client records): a
        backend may make it one write, so the round does not wait on one commit per record."""
        check_collection(collection)
        clean = [normalize_doc(doc, collection) for doc in docs]  # all valid, or none written
        written = 0
        for doc in clean:
            try:
                self.insert(collection, doc)
                written += 1
            except DuplicateIdError:
                pass
        return written

    @abstractmethod
    def get(self, collection: str, doc_id: str) -> dict | None:
        """Return a fresh copy of the document, or None."""

    @abstractmethod
    def update(self, collection: str, doc_id: str, fields: dict) -> dict:
        """Shallow-merge top-level fields atomically; DocumentNotFoundError if absent."""

    @abstractmethod
    def upsert(self, collection: str, doc_id: str, fields: dict) -> dict:
        """Insert ``{"id": doc_id, **fields}`` or merge into the existing document."""

    @abstractmethod
    def delete(self, collection: str, doc_id: str) -> bool:
        """Remove a document; False if there was none. Only for records whose collection is
        not append-only (a schedule the admin removes); the trail and histories never call it."""

    @abstractmethod
    def find(
        self,
        collection: str,
        where: dict | None = None,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict]:
        """Documents matching ``where`` (equality), in insertion or ``order_by`` order, the
        first ``offset`` of them skipped."""

    @abstractmethod
    def count(self, collection: str, where: dict | None = None) -> int:
        """Number of documents matching ``where`` without fetching them."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
