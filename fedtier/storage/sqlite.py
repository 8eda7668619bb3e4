"""StateStore on SQLite: the embedded default, a single file, no server.

One table holds every collection, keyed by (collection, id), with an
AUTOINCREMENT sequence that records insertion order and is never reused.
Documents are stored as JSON text and queried with SQLite's JSON functions.

Concurrency: the reducer uses the store from Flask request threads and its
round thread, so one connection is shared behind a lock (SQLite connections
must not be used by two threads at once). WAL mode lets other processes, such
as an operator's CLI or a restarted reducer, read while this one writes, and
the busy timeout makes a second writer wait instead of failing.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .state_store import (
    DocumentNotFoundError,
    DuplicateIdError,
    StateStore,
    StateStoreError,
    StateStoreFullError,
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

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    doc        TEXT NOT NULL,
    UNIQUE (collection, id)
);
CREATE INDEX IF NOT EXISTS documents_by_collection ON documents (collection, seq);
"""


def _failure(exc: sqlite3.Error, path: Path, what: str) -> StateStoreError:
    """Name the file and the operation; a full disk gets its own class (StateStoreFullError)
    so the reducer can say so (HTTP 507) instead of a generic failure."""
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    cls = StateStoreFullError if full else StateStoreError
    return cls(f"{what} failed in SQLite state store {path}: {exc}")


def _path(field: str) -> str:
    # Quoted label: field names may contain characters that are special in
    # an unquoted JSON path (check_field_name excludes quotes and backslashes).
    return f'$."{field}"'


def _condition(field: str, value: Any) -> tuple[str, list[Any]]:
    """SQL for JSON-typed equality, so that True never matches 1 and '1' never matches 1."""
    path = _path(field)
    if value is None:
        return "(json_type(doc, ?) IS NULL OR json_type(doc, ?) = 'null')", [path, path]
    if isinstance(value, bool):
        return "json_type(doc, ?) = ?", [path, "true" if value else "false"]
    if isinstance(value, (int, float)):
        return "(json_type(doc, ?) IN ('integer', 'real') AND json_extract(doc, ?) = ?)", [path, path, value]
    return "(json_type(doc, ?) = 'text' AND json_extract(doc, ?) = ?)", [path, path, value]


class SQLiteStateStore(StateStore):
    """State in one SQLite file that survives restarts of the reducer."""

    def __init__(self, path: str | os.PathLike, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE)
            # so read-modify-write updates are atomic across processes too.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # the model trail must survive power loss
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            self._conn.execute("SELECT json_type('{}')")
            with self._transaction() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StateStoreError(
                        f"{self.path} has schema version {version}, newer than supported {SCHEMA_VERSION}"
                    )
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StateStoreError(f"cannot open SQLite state store {self.path}: {exc}") from exc
        logger.debug("opened SQLite state store %s", self.path)

    def __repr__(self) -> str:
        return f"SQLiteStateStore({str(self.path)!r})"

    # ---- plumbing -------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateStoreError(f"SQLite state store {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (a full disk does), and a COMMIT that
                # failed leaves the transaction open: end it either way, so the next
                # BEGIN works once there is room again.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(self, collection: str, sql: str, params: list[Any]) -> list[tuple]:
        try:
            with self._lock:
                return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _failure(exc, self.path, f"query on collection {collection!r}") from exc

    @staticmethod
    def _load(text: str) -> dict:
        return json.loads(text)

    # ---- API ------------------------------------------------------------

    def insert(self, collection: str, doc: dict) -> None:
        check_collection(collection)
        clean = normalize_doc(doc, collection)
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO documents (collection, id, doc) VALUES (?, ?, ?)",
                    (collection, clean["id"], json.dumps(clean)),
                )
        except sqlite3.IntegrityError:
            raise DuplicateIdError(
                f"document {clean['id']!r} already exists in collection {collection!r}"
            ) from None
        except sqlite3.Error as exc:
            raise _failure(exc, self.path, f"insert into collection {collection!r}") from exc

    def insert_new(self, collection: str, docs: list[dict]) -> int:
        """One transaction (one commit to disk) for all of them."""
        check_collection(collection)
        clean = [normalize_doc(doc, collection) for doc in docs]
        try:
            with self._transaction() as conn:
                before = conn.total_changes
                conn.executemany("INSERT OR IGNORE INTO documents (collection, id, doc) VALUES (?, ?, ?)",
                                 [(collection, c["id"], json.dumps(c)) for c in clean])
                return conn.total_changes - before
        except sqlite3.Error as exc:
            raise _failure(exc, self.path, f"insert into collection {collection!r}") from exc

    def get(self, collection: str, doc_id: str) -> dict | None:
        check_collection(collection)
        check_id(doc_id, collection)
        rows = self._read(collection, "SELECT doc FROM documents WHERE collection = ? AND id = ?",
                          [collection, doc_id])
        return self._load(rows[0][0]) if rows else None

    def update(self, collection: str, doc_id: str, fields: dict) -> dict:
        return self._merge(collection, doc_id, fields, create=False)

    def upsert(self, collection: str, doc_id: str, fields: dict) -> dict:
        return self._merge(collection, doc_id, fields, create=True)

    def _merge(self, collection: str, doc_id: str, fields: dict, create: bool) -> dict:
        check_collection(collection)
        check_id(doc_id, collection)
        changes = merge_fields(doc_id, fields, collection)
        try:
            with self._transaction() as conn:
                row = conn.execute(
                    "SELECT doc FROM documents WHERE collection = ? AND id = ?", (collection, doc_id)
                ).fetchone()
                if row is None:
                    if not create:
                        raise DocumentNotFoundError(
                            f"document {doc_id!r} not found in collection {collection!r}"
                        )
                    doc = {"id": doc_id, **changes}
                    conn.execute("INSERT INTO documents (collection, id, doc) VALUES (?, ?, ?)",
                                 (collection, doc_id, json.dumps(doc)))
                else:
                    doc = self._load(row[0])
                    doc.update(changes)
                    conn.execute("UPDATE documents SET doc = ? WHERE collection = ? AND id = ?",
                                 (json.dumps(doc), collection, doc_id))
        except sqlite3.Error as exc:
            raise _failure(exc, self.path, f"update of {doc_id!r} in collection {collection!r}") from exc
        return doc

    def delete(self, collection: str, doc_id: str) -> bool:
        check_collection(collection)
        check_id(doc_id, collection)
        try:
            with self._transaction() as conn:
                cursor = conn.execute("DELETE FROM documents WHERE collection = ? AND id = ?", (collection, doc_id))
        except sqlite3.Error as exc:
            raise _failure(exc, self.path, f"delete of {doc_id!r} in collection {collection!r}") from exc
        return cursor.rowcount > 0

    def _where_sql(self, collection: str, where: dict | None) -> tuple[str, list[Any]]:
        clauses = ["collection = ?"]
        params: list[Any] = [collection]
        for field, value in normalize_where(where, collection).items():
            sql, values = _condition(field, value)
            clauses.append(sql)
            params.extend(values)
        return " AND ".join(clauses), params

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
        sql, params = self._where_sql(collection, where)
        direction = "DESC" if descending else "ASC"
        order = f"seq {direction}"
        if order_by is not None:
            check_field_name(order_by, collection)
            # Ties keep insertion order on both backends.
            order = f"json_extract(doc, ?) {direction}, seq ASC"
            params.append(_path(order_by))
        query = f"SELECT doc FROM documents WHERE {sql} ORDER BY {order}"
        if limit is not None or offset:
            query += " LIMIT ? OFFSET ?"  # SQLite takes OFFSET only after a LIMIT; -1 is none
            params.extend([-1 if limit is None else limit, offset])
        return [self._load(row[0]) for row in self._read(collection, query, params)]

    def count(self, collection: str, where: dict | None = None) -> int:
        check_collection(collection)
        sql, params = self._where_sql(collection, where)
        return int(self._read(collection, f"SELECT COUNT(*) FROM documents WHERE {sql}", params)[0][0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                logger.debug("closed SQLite state store %s", self.path)
