"""Contract tests every StateStore backend must pass.

Runs on SQLite (a temp file), on MongoStateStore over mongomock, and on a real
MongoDB when FEDTIER_TEST_MONGO_URI is set, so the reducer can rely on the
same semantics whichever backend is configured.
"""
from __future__ import annotations

import os
import threading
import uuid

import mongomock
import pytest

from fedtier.storage import (
    DocumentNotFoundError,
    DuplicateIdError,
    MongoStateStore,
    SQLiteStateStore,
    StateStore,
    StateStoreError,
)

MONGO_URI_ENV = "FEDTIER_TEST_MONGO_URI"


@pytest.fixture(params=["sqlite", "mongomock", "mongodb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s: StateStore = SQLiteStateStore(tmp_path / "state.db")
        yield s
        s.close()
    elif request.param == "mongomock":
        s = MongoStateStore(mongomock.MongoClient(), "fedtier_test")
        yield s
        s.close()
    else:
        uri = os.environ.get(MONGO_URI_ENV)
        if not uri:
            pytest.skip(f"real MongoDB not configured: set {MONGO_URI_ENV} to run against it")
        import pymongo

        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        database = f"fedtier_test_{uuid.uuid4().hex[:12]}"
        s = MongoStateStore(client, database)
        try:
            yield s
        finally:
            s.close()
            client.drop_database(database)
            client.close()


def _ids(docs: list[dict]) -> list[str]:
    return [d["id"] for d in docs]


# ---- insert / get ---------------------------------------------------------


def test_insert_get_round_trip(store):
    store.insert("clients", {"id": "c1", "name": "alice", "active": True, "score": 0.5})
    assert store.get("clients", "c1") == {"id": "c1", "name": "alice", "active": True, "score": 0.5}
    assert store.get("clients", "missing") is None
    assert store.get("combiners", "c1") is None  # collections are separate namespaces


def test_duplicate_insert_never_overwrites(store):
    store.insert("rounds", {"id": "r1", "status": "running"})
    with pytest.raises(DuplicateIdError, match="r1.*rounds"):
        store.insert("rounds", {"id": "r1", "status": "overwritten"})
    assert store.get("rounds", "r1") == {"id": "r1", "status": "running"}
    assert store.count("rounds") == 1
    store.insert("sessions", {"id": "r1"})  # same id, other collection: fine


def test_insert_new_skips_taken_ids_and_keeps_order(store):
    """Many records at once (a round's client records): new ones land in the order given, a
    taken id is skipped and left as it was, and the count says how many landed."""
    from fedtier.storage.collections import CLIENT_ROUNDS
    store.insert(CLIENT_ROUNDS, {"id": "r1.b", "client": "b", "seq": 0})
    written = store.insert_new(CLIENT_ROUNDS, [{"id": "r1.c", "client": "c", "seq": 1},
                                               {"id": "r1.b", "client": "b", "seq": 9},
                                               {"id": "r1.a", "client": "a", "seq": 1}])
    assert written == 2
    assert _ids(store.find(CLIENT_ROUNDS)) == ["r1.b", "r1.c", "r1.a"]
    assert store.get(CLIENT_ROUNDS, "r1.b")["seq"] == 0
    assert _ids(store.find(CLIENT_ROUNDS, where={"client": "a"}, order_by="seq", descending=True)) == ["r1.a"]
    with pytest.raises(ValueError):
        store.insert_new(CLIENT_ROUNDS, [{"id": "r2.x"}, {"no": "id"}])
    assert store.get(CLIENT_ROUNDS, "r2.x") is None  # a bad document writes none of them


def test_nested_json_round_trips(store):
    doc = {
        "id": "m1",
        "meta": {"layers": [{"name": "dense", "shape": [128, 10]}, {"name": "out", "shape": [10]}],
                 "empty": {}, "none": None},
        "tags": ["a", "b"],
        "big": 2**53,
        "neg": -1.25e-7,
        "text": "ünïcødé \"quoted\" \\ back",
        "flag": False,
    }
    store.insert("models", doc)
    assert store.get("models", "m1") == doc


def test_tuples_come_back_as_lists(store):
    store.insert("models", {"id": "t", "shape": (3, 4)})
    assert store.get("models", "t")["shape"] == [3, 4]


def test_returned_docs_are_copies(store):
    original = {"id": "s1", "config": {"rounds": 3}, "list": [1]}
    store.insert("sessions", original)
    original["config"]["rounds"] = 99  # caller keeps mutating its own dict
    original["list"].append(2)
    assert "_id" not in original  # the store did not write into the caller's dict

    got = store.get("sessions", "s1")
    got["config"]["rounds"] = 42
    got["new"] = 1
    for found in store.find("sessions"):
        found["config"]["rounds"] = 7
    updated = store.update("sessions", "s1", {"x": 1})
    updated["config"]["rounds"] = 8
    upserted = store.upsert("sessions", "s1", {"y": 2})
    upserted["list"].append(3)

    assert store.get("sessions", "s1") == {"id": "s1", "config": {"rounds": 3}, "list": [1], "x": 1, "y": 2}


def test_field_values_are_not_aliased(store):
    fields = {"cfg": {"a": 1}}
    store.upsert("sessions", "u", fields)
    fields["cfg"]["a"] = 2
    store.update("sessions", "u", fields)
    fields["cfg"]["a"] = 3
    assert store.get("sessions", "u")["cfg"] == {"a": 2}


@pytest.mark.parametrize("bad", ["", "Clients", "clients1", "a-b", "a.b", "x y", None])
def test_invalid_collection_names(store, bad):
    with pytest.raises(ValueError, match="collection"):
        store.insert(bad, {"id": "x"})
    with pytest.raises(ValueError, match="collection"):
        store.get(bad, "x")
    with pytest.raises(ValueError, match="collection"):
        store.find(bad)
    with pytest.raises(ValueError, match="collection"):
        store.count(bad)


@pytest.mark.parametrize("doc", [{}, {"id": 5}, {"id": ""}, {"id": None}, {"name": "no id"}])
def test_docs_need_a_string_id(store, doc):
    with pytest.raises(ValueError, match="id"):
        store.insert("clients", doc)
    assert store.count("clients") == 0


@pytest.mark.parametrize("doc", [
    {"id": "x", "obj": object()},
    {"id": "x", "nan": float("nan")},
    {"id": "x", "_id": "other"},
    {"id": "x", "a.b": 1},
    {"id": "x", "$set": 1},
])
def test_unstorable_docs_are_rejected(store, doc):
    with pytest.raises(ValueError):
        store.insert("clients", doc)
    assert store.get("clients", "x") is None


# ---- update / upsert ------------------------------------------------------


def test_update_shallow_merges(store):
    store.insert("rounds", {"id": "r1", "status": "running", "config": {"a": 1, "b": 2}, "n": 1})
    new = store.update("rounds", "r1", {"status": "done", "config": {"a": 9}, "result": [1, 2]})
    expected = {"id": "r1", "status": "done", "config": {"a": 9}, "n": 1, "result": [1, 2]}
    assert new == expected  # top-level replace: config.b is gone
    assert store.get("rounds", "r1") == expected
    assert store.update("rounds", "r1", {}) == expected
    assert store.update("rounds", "r1", {"id": "r1", "n": None})["n"] is None


def test_update_missing_raises(store):
    with pytest.raises(DocumentNotFoundError, match="ghost.*rounds") as info:
        store.update("rounds", "ghost", {"status": "done"})
    assert isinstance(info.value, KeyError)
    assert store.get("rounds", "ghost") is None
    assert store.count("rounds") == 0


def test_update_cannot_change_id(store):
    store.insert("rounds", {"id": "r1"})
    with pytest.raises(ValueError, match="id"):
        store.update("rounds", "r1", {"id": "r2"})
    with pytest.raises(ValueError, match="id"):
        store.upsert("rounds", "r1", {"id": "r2"})
    assert store.get("rounds", "r2") is None
    assert store.get("rounds", "r1") == {"id": "r1"}


def test_delete_removes_one_document_only(store):
    store.insert("schedules", {"id": "a"})
    store.insert("schedules", {"id": "b"})
    store.insert("sessions", {"id": "a"})  # same id, other collection: untouched
    assert store.delete("schedules", "a") is True
    assert store.delete("schedules", "a") is False
    assert store.get("schedules", "a") is None
    assert _ids(store.find("schedules")) == ["b"] and store.get("sessions", "a") == {"id": "a"}
    store.insert("schedules", {"id": "a"})  # the id is free again, and sorts as new
    assert _ids(store.find("schedules")) == ["b", "a"]


def test_upsert_inserts_then_merges(store):
    assert store.upsert("singletons", "controller", {"state": "idle"}) == {"id": "controller", "state": "idle"}
    assert store.upsert("singletons", "controller", {"round": 3}) == {
        "id": "controller", "state": "idle", "round": 3}
    assert store.upsert("singletons", "empty", {}) == {"id": "empty"}
    assert store.upsert("singletons", "empty", {}) == {"id": "empty"}
    assert store.count("singletons") == 2


def test_update_and_upsert_keep_insertion_order(store):
    for i in range(4):
        store.insert("clients", {"id": f"c{i}"})
    store.update("clients", "c0", {"seen": 1})
    store.upsert("clients", "c1", {"seen": 2})
    store.upsert("clients", "c9", {"seen": 3})
    assert _ids(store.find("clients")) == ["c0", "c1", "c2", "c3", "c9"]


# ---- find / count ---------------------------------------------------------


@pytest.fixture
def validations(store):
    rows = [
        {"id": "v1", "model": "m1", "client": "a", "acc": 0.7, "ok": True},
        {"id": "v2", "model": "m2", "client": "b", "acc": 0.9, "ok": False},
        {"id": "v3", "model": "m1", "client": "b", "acc": 0.8, "ok": True, "note": None},
        {"id": "v4", "model": "m2", "client": "a", "acc": 0.6},
        {"id": "v5", "model": "m1", "client": "c", "acc": 0.8, "ok": 1},
    ]
    for row in rows:
        store.insert("validations", row)
    return store


def test_find_defaults_to_insertion_order(validations):
    assert _ids(validations.find("validations")) == ["v1", "v2", "v3", "v4", "v5"]
    assert _ids(validations.find("validations", descending=True)) == ["v5", "v4", "v3", "v2", "v1"]
    assert validations.find("nothing_here") == []


def test_insertion_order_is_not_id_order(store):
    for doc_id in ["z", "a", "m", "b"]:
        store.insert("models", {"id": doc_id})
    assert _ids(store.find("models")) == ["z", "a", "m", "b"]
    assert _ids(store.find("models", limit=2)) == ["z", "a"]


def test_find_where_equality(validations):
    assert _ids(validations.find("validations", where={"model": "m1"})) == ["v1", "v3", "v5"]
    assert _ids(validations.find("validations", where={"model": "m1", "client": "b"})) == ["v3"]
    assert _ids(validations.find("validations", where={"acc": 0.8})) == ["v3", "v5"]
    assert _ids(validations.find("validations", where={"id": "v4"})) == ["v4"]
    assert validations.find("validations", where={"model": "m3"}) == []
    assert _ids(validations.find("validations", where={})) == ["v1", "v2", "v3", "v4", "v5"]


def test_find_where_is_json_type_aware(validations):
    # True must not match 1 (v5) and 1 must not match True (v1, v3)
    assert _ids(validations.find("validations", where={"ok": True})) == ["v1", "v3"]
    assert _ids(validations.find("validations", where={"ok": 1})) == ["v5"]
    assert _ids(validations.find("validations", where={"ok": False})) == ["v2"]
    assert validations.find("validations", where={"acc": "0.8"}) == []


def test_find_where_none_matches_missing_and_null(validations):
    assert _ids(validations.find("validations", where={"note": None})) == ["v1", "v2", "v3", "v4", "v5"]
    assert _ids(validations.find("validations", where={"ok": None})) == ["v4"]
    assert validations.count("validations", where={"ok": None}) == 1


def test_find_order_by(validations):
    assert _ids(validations.find("validations", order_by="acc")) == ["v4", "v1", "v3", "v5", "v2"]
    # ties (v3, v5 at 0.8) keep insertion order in both directions
    assert _ids(validations.find("validations", order_by="acc", descending=True)) == [
        "v2", "v3", "v5", "v1", "v4"]
    assert _ids(validations.find("validations", order_by="client")) == ["v1", "v4", "v2", "v3", "v5"]


def test_find_order_by_missing_field_sorts_first_ascending(validations):
    # only v3 has "note" (null): everyone ties, insertion order
    assert _ids(validations.find("validations", order_by="note")) == ["v1", "v2", "v3", "v4", "v5"]
    validations.update("validations", "v2", {"rank": 2})
    validations.update("validations", "v4", {"rank": 1})
    assert _ids(validations.find("validations", order_by="rank")) == ["v1", "v3", "v5", "v4", "v2"]
    assert _ids(validations.find("validations", order_by="rank", descending=True)) == [
        "v2", "v4", "v1", "v3", "v5"]


def test_find_where_order_limit_combined(validations):
    got = validations.find("validations", where={"model": "m1"}, order_by="acc", descending=True, limit=2)
    assert _ids(got) == ["v3", "v5"]
    assert got[0] == {"id": "v3", "model": "m1", "client": "b", "acc": 0.8, "ok": True, "note": None}
    assert _ids(validations.find("validations", limit=1)) == ["v1"]
    assert validations.find("validations", limit=0) == []
    assert len(validations.find("validations", limit=100)) == 5


def test_find_offset_pages_in_the_same_order(validations):
    """Issue 18: the dashboard pages through every round; an offset skips that many of the same order."""
    assert _ids(validations.find("validations", offset=3)) == ["v4", "v5"]
    assert _ids(validations.find("validations", offset=1, limit=2)) == ["v2", "v3"]
    assert _ids(validations.find("validations", descending=True, offset=1, limit=2)) == ["v4", "v3"]
    assert _ids(validations.find("validations", where={"model": "m1"}, order_by="acc", offset=1)) == ["v3", "v5"]
    assert validations.find("validations", offset=5) == [] and validations.find("validations", offset=99) == []
    assert validations.find("validations", offset=2, limit=0) == []


def test_find_rejects_bad_arguments(validations):
    with pytest.raises(ValueError, match="limit"):
        validations.find("validations", limit=-1)
    for bad in (-1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="offset"):
            validations.find("validations", offset=bad)
    with pytest.raises(ValueError, match="where"):
        validations.find("validations", where={"model": ["m1"]})
    with pytest.raises(ValueError, match="field"):
        validations.find("validations", order_by="a.b")
    with pytest.raises(ValueError, match="field"):
        validations.find("validations", where={"$where": "1"})


def test_count(validations):
    assert validations.count("validations") == 5
    assert validations.count("validations", where={"model": "m2"}) == 2
    assert validations.count("validations", where={"model": "m2", "client": "a"}) == 1
    assert validations.count("validations", where={"model": "nope"}) == 0
    assert validations.count("other") == 0


# ---- concurrency and durability -------------------------------------------


def test_sqlite_concurrent_inserts_from_threads_all_land(tmp_path):
    store = SQLiteStateStore(tmp_path / "state.db")
    n_threads, per_thread = 8, 50
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                store.insert("clients", {"id": f"t{t}-{i}", "thread": t, "i": i})
                store.upsert("singletons", f"last-{t}", {"i": i})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.count("clients") == n_threads * per_thread
    docs = store.find("clients")
    assert len({d["id"] for d in docs}) == n_threads * per_thread
    for t in range(n_threads):
        # per-thread insertion order is preserved in the global order
        assert [d["i"] for d in docs if d["thread"] == t] == list(range(per_thread))
        assert store.get("singletons", f"last-{t}") == {"id": f"last-{t}", "i": per_thread - 1}
    store.close()


def test_sqlite_state_survives_close_and_reopen(tmp_path):
    path = tmp_path / "nested" / "state.db"
    with SQLiteStateStore(path) as store:
        store.insert("rounds", {"id": "r1", "status": "running"})
        store.insert("rounds", {"id": "r0"})
        store.update("rounds", "r1", {"status": "done"})
    reopened = SQLiteStateStore(path)
    try:
        assert _ids(reopened.find("rounds")) == ["r1", "r0"]
        assert reopened.get("rounds", "r1") == {"id": "r1", "status": "done"}
        with pytest.raises(DuplicateIdError):
            reopened.insert("rounds", {"id": "r1"})
        reopened.insert("rounds", {"id": "r2"})
        assert _ids(reopened.find("rounds")) == ["r1", "r0", "r2"]
    finally:
        reopened.close()


def test_sqlite_two_handles_on_one_file_see_each_other(tmp_path):
    """Stands in for two processes (e.g. reducer and an operator CLI)."""
    a = SQLiteStateStore(tmp_path / "state.db")
    b = SQLiteStateStore(tmp_path / "state.db")
    try:
        a.insert("clients", {"id": "c1"})
        assert b.get("clients", "c1") == {"id": "c1"}
        with pytest.raises(DuplicateIdError):
            b.insert("clients", {"id": "c1"})
        b.update("clients", "c1", {"seen": True})
        assert a.get("clients", "c1") == {"id": "c1", "seen": True}
        mode = a._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        a.close()
        b.close()


def test_use_after_close_is_a_clear_error(tmp_path):
    store = SQLiteStateStore(tmp_path / "state.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StateStoreError, match="closed"):
        store.get("clients", "x")
    mongo = MongoStateStore(mongomock.MongoClient(), "closed_test")
    mongo.close()
    with pytest.raises(StateStoreError, match="closed"):
        mongo.get("clients", "x")


def test_mongo_never_exposes_internal_fields_and_uses_id_as_key():
    client = mongomock.MongoClient()
    store = MongoStateStore(client, "internals")
    store.insert("clients", {"id": "c1", "x": 1})
    store.upsert("clients", "c2", {"x": 2})
    raw = client["internals"]["clients"].find_one({"_id": "c1"})
    assert raw is not None and raw["_seq"] < client["internals"]["clients"].find_one({"_id": "c2"})["_seq"]
    for doc in store.find("clients") + [store.get("clients", "c1"), store.update("clients", "c1", {"y": 1})]:
        assert "_id" not in doc and "_seq" not in doc
    assert store.count("clients") == 2
