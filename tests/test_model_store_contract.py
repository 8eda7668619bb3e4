"""Contract tests every ModelStore backend must pass.

The same tests run on the local directory store and on the S3 store pointed
at moto's S3 server, so the two cannot drift apart. Backend-specific tests
(corrupting data behind the store's back, S3 outages) are at the end.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import socket
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from minio import Minio
from moto.server import ThreadedMotoServer

from fedtier.storage import (
    LocalModelStore,
    ModelExistsError,
    ModelNotFoundError,
    ModelStore,
    ModelStoreError,
    S3ModelStore,
    StorageUnavailableError,
    StoredModel,
)
import fedtier.storage.s3 as s3_module

ACCESS_KEY = "fedtier-test"
SECRET_KEY = "fedtier-test-secret"
REGION = "us-east-1"
MiB = 1 << 20


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_moto() -> tuple[ThreadedMotoServer, str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def modelstore_moto_endpoint() -> Iterator[str]:
    """One moto S3 server for the module; each test gets its own bucket."""
    server, endpoint = _start_moto()
    try:
        yield endpoint
    finally:
        server.stop()


def _s3_store(endpoint: str, bucket: str, **kw) -> S3ModelStore:
    return S3ModelStore(endpoint, ACCESS_KEY, SECRET_KEY, bucket, secure=False, region=REGION, **kw)


def _new_bucket() -> str:
    return f"fedtier-{uuid.uuid4().hex[:16]}"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ModelStore:
    if request.param == "local":
        return LocalModelStore(tmp_path / "store")
    endpoint = request.getfixturevalue("modelstore_moto_endpoint")
    return _s3_store(endpoint, _new_bucket(), retries=1, backoff_s=0.01)


def _corrupt(store: ModelStore, model_id: str) -> None:
    """Change a stored model's bytes behind the store's back, keeping its size."""
    if isinstance(store, LocalModelStore):
        data = store.root / "models" / model_id / "data"
        os.chmod(data, 0o644)
        with open(data, "r+b") as fh:
            first = fh.read(1)
            fh.seek(0)
            fh.write(bytes([first[0] ^ 0xFF]))
        return
    assert isinstance(store, S3ModelStore)
    raw = Minio(store.endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
    original = raw.get_object(store.bucket, model_id)
    try:
        body = bytearray(original.read())
    finally:
        original.close()
        original.release_conn()
    body[0] ^= 0xFF
    sha = store.stat(model_id).sha256  # keep the recorded hash: only the bytes change
    import io
    raw.put_object(store.bucket, model_id, io.BytesIO(bytes(body)), len(body), metadata={"sha256": sha})


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- round trips ----------------------------------------------------------


def test_put_file_get_file_round_trip_with_hash(store, tmp_path):
    data = os.urandom(3 * MiB + 17)
    src = _write(tmp_path / "src.bin", data)

    stored = store.put_file("model-1", src)

    expected = StoredModel("model-1", hashlib.sha256(data).hexdigest(), len(data))
    assert stored == expected
    assert store.stat("model-1") == expected
    assert store.exists("model-1")
    dest = tmp_path / "out" / "copy.bin"
    assert store.get_file("model-1", dest) == expected
    assert dest.read_bytes() == data
    assert b"".join(store.iter_chunks("model-1", chunk_size=MiB)) == data
    # get_file leaves nothing but dest behind
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]


def test_get_file_replaces_existing_dest(store, tmp_path):
    store.put_stream("m", [b"new contents"])
    dest = _write(tmp_path / "dest.bin", b"old")
    store.get_file("m", dest)
    assert dest.read_bytes() == b"new contents"


def test_empty_model_round_trips(store, tmp_path):
    stored = store.put_stream("empty", [])
    assert stored == StoredModel("empty", hashlib.sha256(b"").hexdigest(), 0)
    store.get_file("empty", tmp_path / "e")
    assert (tmp_path / "e").read_bytes() == b""


def test_put_stream_of_many_chunks(store, tmp_path):
    chunks = [bytes([i % 251]) * (i * 37 % 4096 + 1) for i in range(500)]
    data = b"".join(chunks)

    stored = store.put_stream("many.chunks", iter(chunks))

    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.size == len(data)
    store.get_file("many.chunks", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    small = list(store.iter_chunks("many.chunks", chunk_size=1000))
    assert b"".join(small) == data
    assert max(len(c) for c in small) <= 1000


def _big_chunks(n_mib: int, digest: "hashlib._Hash") -> Iterator[bytes]:
    block = os.urandom(MiB)
    for i in range(n_mib):
        chunk = block[i:] + block[:i]  # fresh bytes per chunk, distinct content
        digest.update(chunk)
        yield chunk
    tail = b"tail" * 1000
    digest.update(tail)
    yield tail


def test_large_stream_round_trips_in_bounded_memory(store, tmp_path):
    sent = hashlib.sha256()
    measure = isinstance(store, LocalModelStore)  # moto keeps S3 objects in this process's memory
    if measure:
        tracemalloc.start()
    try:
        stored = store.put_stream("big-model", _big_chunks(65, sent))
        if measure:
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 16 * MiB, f"put_stream peaked at {peak / MiB:.1f} MiB for a 65 MiB model"
    finally:
        if measure:
            tracemalloc.stop()
    assert stored.size == 65 * MiB + 4000
    assert stored.sha256 == sent.hexdigest()

    received = hashlib.sha256()
    n = 0
    for chunk in store.iter_chunks("big-model"):
        assert len(chunk) <= MiB
        received.update(chunk)
        n += len(chunk)
    assert (n, received.hexdigest()) == (stored.size, stored.sha256)
    dest = tmp_path / "big.bin"
    store.get_file("big-model", dest)
    assert dest.stat().st_size == stored.size

    if isinstance(store, S3ModelStore):
        raw = Minio(store.endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
        etag = raw.stat_object(store.bucket, "big-model").etag
        assert "-" in etag, f"expected a multipart ETag, got {etag!r}"


# ---- immutability and ids -------------------------------------------------


def test_duplicate_id_is_refused_and_original_kept(store, tmp_path):
    first = store.put_stream("dup", [b"original"])
    with pytest.raises(ModelExistsError, match="dup"):
        store.put_stream("dup", [b"replacement"])
    with pytest.raises(ModelExistsError, match="dup"):
        store.put_file("dup", _write(tmp_path / "other", b"other"))
    assert store.stat("dup") == first
    assert b"".join(store.iter_chunks("dup")) == b"original"
    assert store.list_ids() == ["dup"]


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "..", ".", "sp ace", "ü", "x" * 129, "a\nb", None, 5])
def test_invalid_ids_are_rejected(store, tmp_path, bad):
    src = _write(tmp_path / "f", b"x")
    for call in (
        lambda: store.put_stream(bad, [b"x"]),
        lambda: store.put_file(bad, src),
        lambda: store.stat(bad),
        lambda: store.exists(bad),
        lambda: store.iter_chunks(bad),
        lambda: store.get_file(bad, tmp_path / "d"),
    ):
        with pytest.raises(ValueError, match="invalid model id"):
            call()
    assert store.list_ids() == []


def test_longest_valid_id_is_accepted(store):
    model_id = "A-z_0.9" + "x" * 121
    assert len(model_id) == 128
    store.put_stream(model_id, [b"ok"])
    assert store.list_ids() == [model_id]


def test_missing_id_raises_not_found(store, tmp_path):
    assert not store.exists("nope")
    with pytest.raises(ModelNotFoundError, match="nope") as info:
        store.stat("nope")
    assert isinstance(info.value, KeyError)
    with pytest.raises(ModelNotFoundError):
        store.iter_chunks("nope")  # raised eagerly, before iteration
    with pytest.raises(ModelNotFoundError):
        store.get_file("nope", tmp_path / "d")
    assert not (tmp_path / "d").exists()


# ---- failure atomicity ----------------------------------------------------


class Boom(RuntimeError):
    pass


def _failing_chunks(n_good: int, size: int) -> Iterator[bytes]:
    for _ in range(n_good):
        yield b"z" * size
    raise Boom("producer died")


@pytest.mark.parametrize("n_good,size", [(0, 1), (3, 1000), (8, MiB)])
def test_failed_put_stream_leaves_nothing(store, n_good, size):
    store.put_stream("keep", [b"k"])
    with pytest.raises(Boom):
        store.put_stream("half", _failing_chunks(n_good, size))
    assert not store.exists("half")
    assert store.list_ids() == ["keep"]
    with pytest.raises(ModelNotFoundError):
        store.stat("half")
    # the id is still free: a retry by the producer succeeds
    assert store.put_stream("half", [b"second try"]).size == 10


def test_bad_chunk_type_leaves_nothing(store):
    with pytest.raises(TypeError, match="bytes-like"):
        store.put_stream("typed", [b"ok", "not bytes"])
    assert not store.exists("typed")


def test_put_file_of_missing_source(store, tmp_path):
    with pytest.raises(FileNotFoundError):
        store.put_file("ghost", tmp_path / "does-not-exist")
    assert store.list_ids() == []


def test_list_ids_sorted(store):
    for model_id in ["b", "a.2", "c_3", "A"]:
        store.put_stream(model_id, [model_id.encode()])
    assert store.list_ids() == ["A", "a.2", "b", "c_3"]


# ---- integrity ------------------------------------------------------------


def test_get_file_detects_corruption_and_leaves_no_dest(store, tmp_path):
    data = os.urandom(2 * MiB)
    stored = store.put_file("victim", _write(tmp_path / "src", data))
    _corrupt(store, "victim")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "victim.bin"

    with pytest.raises(ModelStoreError, match="victim.*corrupt"):
        store.get_file("victim", dest)

    assert list(out_dir.iterdir()) == []  # neither dest nor a temp file
    with pytest.raises(ModelStoreError, match="corrupt"):
        for _ in store.iter_chunks("victim"):
            pass
    assert store.stat("victim") == stored  # the record itself is unchanged


def test_get_file_corruption_keeps_previous_dest(store, tmp_path):
    store.put_stream("victim2", [b"abcdef"])
    _corrupt(store, "victim2")
    dest = _write(tmp_path / "dest", b"previous good copy")
    with pytest.raises(ModelStoreError):
        store.get_file("victim2", dest)
    assert dest.read_bytes() == b"previous good copy"


# ---- backend-specific -----------------------------------------------------


def test_local_published_model_is_read_only_and_survives_reopen(tmp_path):
    store = LocalModelStore(tmp_path)
    stored = store.put_stream("m", [b"data"])
    mode = (tmp_path / "models" / "m" / "data").stat().st_mode
    assert mode & 0o222 == 0
    assert LocalModelStore(tmp_path).stat("m") == stored
    assert os.listdir(tmp_path / "tmp") == []


def test_local_concurrent_writers_of_one_id_never_overwrite(tmp_path):
    """Exactly one of several racing writers wins; the winner's hash matches its data."""
    import threading

    store = LocalModelStore(tmp_path)
    barrier = threading.Barrier(6)
    results: dict[int, object] = {}

    def writer(i: int) -> None:
        def chunks():
            barrier.wait()
            yield bytes([i]) * 100_000

        try:
            results[i] = store.put_stream("contested", chunks())
        except ModelExistsError as exc:
            results[i] = exc

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results.values() if isinstance(r, StoredModel)]
    assert len(winners) == 1
    assert sum(isinstance(r, ModelExistsError) for r in results.values()) == 5
    data = b"".join(store.iter_chunks("contested"))  # verifies hash against data
    assert hashlib.sha256(data).hexdigest() == winners[0].sha256


def test_local_sweeps_only_stale_temp(tmp_path):
    LocalModelStore(tmp_path)
    stale = tmp_path / "tmp" / "stale"
    fresh = tmp_path / "tmp" / "fresh"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    LocalModelStore(tmp_path)
    assert not stale.exists()
    assert fresh.exists()


def test_s3_foreign_object_without_hash_is_reported(modelstore_moto_endpoint):
    import io

    store = _s3_store(modelstore_moto_endpoint, _new_bucket())
    raw = Minio(modelstore_moto_endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
    raw.put_object(store.bucket, "foreign", io.BytesIO(b"x"), 1)
    raw.put_object(store.bucket, "dir/not-an-id", io.BytesIO(b"x"), 1)
    assert store.exists("foreign")
    assert store.list_ids() == ["foreign"]
    with pytest.raises(ModelStoreError, match="foreign.*no sha256"):
        store.stat("foreign")
    with pytest.raises(ModelExistsError):
        store.put_stream("foreign", [b"y"])


def test_s3_unreachable_endpoint_raises_after_bounded_retries(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(s3_module.time, "sleep", sleeps.append)
    endpoint = f"127.0.0.1:{_free_port()}"  # nothing listens there

    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        _s3_store(endpoint, "fedtier-down", retries=3, backoff_s=0.1, connect_timeout_s=2)
    assert time.monotonic() - started < 5
    assert endpoint in str(info.value)
    assert "4 attempt" in str(info.value)
    assert len(sleeps) == 3
    # exponential backoff (with at most 25% jitter)
    for attempt, delay in enumerate(sleeps):
        assert 0.1 * 2 ** attempt <= delay <= 0.125 * 2 ** attempt


def test_s3_server_going_down_raises_unavailable(caplog):
    server, endpoint = _start_moto()
    try:
        store = _s3_store(endpoint, _new_bucket(), retries=2, backoff_s=0.01, connect_timeout_s=2)
        store.put_stream("before", [b"up"])
    finally:
        server.stop()
    with caplog.at_level(logging.WARNING, logger="fedtier.storage.s3"):
        for call in (lambda: store.stat("before"), lambda: store.put_stream("after", [b"x"]),
                     store.list_ids):
            with pytest.raises(StorageUnavailableError, match=endpoint):
                call()
    assert any("retrying" in r.getMessage() for r in caplog.records)


def test_s3_retries_transient_failures_then_succeeds(modelstore_moto_endpoint, monkeypatch):
    """A flaky connection is retried transparently; the upload still lands once."""
    import urllib3

    monkeypatch.setattr(s3_module.time, "sleep", lambda s: None)
    store = _s3_store(modelstore_moto_endpoint, _new_bucket(), retries=3, backoff_s=0.01)
    real = store._client.put_object
    failures = itertools.count()

    def flaky_put_object(*args, **kwargs):
        if next(failures) < 2:
            kwargs["data"].read(10)  # partially consumed before the drop
            raise urllib3.exceptions.ProtocolError("connection reset")
        return real(*args, **kwargs)

    monkeypatch.setattr(store._client, "put_object", flaky_put_object)
    stored = store.put_stream("flaky", [b"payload" * 1000])
    assert stored.size == 7000
    assert b"".join(store.iter_chunks("flaky")) == b"payload" * 1000


def test_s3_download_resumes_after_a_dropped_connection(modelstore_moto_endpoint, monkeypatch):
    import urllib3

    monkeypatch.setattr(s3_module.time, "sleep", lambda s: None)
    store = _s3_store(modelstore_moto_endpoint, _new_bucket(), retries=2, backoff_s=0.01)
    data = os.urandom(3 * MiB)
    store.put_stream("resumable", [data])
    real = store._client.get_object
    offsets: list[int] = []

    class DroppingResponse:
        """Delivers one chunk, then the connection resets."""

        def __init__(self, response):
            self._response = response

        def stream(self, amt):
            yield next(self._response.stream(amt))
            raise urllib3.exceptions.ProtocolError("connection reset by peer")

        def close(self):
            self._response.close()

        def release_conn(self):
            self._response.release_conn()

    def get_object(**kwargs):
        offsets.append(kwargs.get("offset", 0))
        response = real(**kwargs)
        return DroppingResponse(response) if len(offsets) == 1 else response

    monkeypatch.setattr(store._client, "get_object", get_object)
    assert b"".join(store.iter_chunks("resumable", chunk_size=MiB)) == data
    assert offsets == [0, MiB]  # resumed where it stopped, not from the start


def test_s3_source_changing_during_upload_publishes_nothing(modelstore_moto_endpoint, tmp_path, monkeypatch):
    store = _s3_store(modelstore_moto_endpoint, _new_bucket())
    src = _write(tmp_path / "src", b"what gets uploaded")
    # The hash is taken from different bytes than the upload then reads,
    # as if the file were rewritten between the two passes.
    monkeypatch.setattr(s3_module, "iter_file", lambda path: iter([b"what was hashed!!!"]))
    with pytest.raises(ModelStoreError, match="changed while it was uploaded"):
        store.put_file("moving", src)
    assert not store.exists("moving")
    assert store.list_ids() == []
