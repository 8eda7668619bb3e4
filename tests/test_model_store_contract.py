"""Contract tests every ModelStore backend must pass.

The same tests run on the local directory store and on the S3 store pointed
at moto's S3 server, so the two cannot drift apart. Backend-specific tests
(corrupting data behind the store's back, S3 outages) are at the end.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import resource
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
    ModelCorruptError,
    ModelExistsError,
    ModelNotFoundError,
    ModelStore,
    ModelStoreError,
    S3ModelStore,
    StorageFullError,
    StorageUnavailableError,
    StoredModel,
)
import fedtier.storage.local as local_module
import fedtier.storage.model_store as model_store_module
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


def _corrupt(store: ModelStore, model_id: str, offset: int = 0, truncate: int = 0) -> None:
    """Change a stored model's bytes behind the store's back: flip the byte at
    offset (the size stays), or cut ``truncate`` bytes off its end."""
    if isinstance(store, LocalModelStore):
        data = store.root / "models" / model_id / "data"
        os.chmod(data, 0o644)
        with open(data, "r+b") as fh:
            if truncate:
                fh.truncate(os.fstat(fh.fileno()).st_size - truncate)
                return
            fh.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
            where = fh.tell()
            first = fh.read(1)
            fh.seek(where)
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
    if truncate:
        del body[-truncate:]
    else:
        body[offset] ^= 0xFF
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


def test_put_file_with_link_reads_back_after_the_source_is_renamed_and_unlinked(store, tmp_path):
    data = os.urandom(2 * MiB + 5)
    src = _write(tmp_path / "scratch", data)
    expected = StoredModel("linked", hashlib.sha256(data).hexdigest(), len(data))

    assert store.put_file("linked", src, link=True) == expected

    if isinstance(store, LocalModelStore):  # really taken by link, not copied
        stored_data = store.root / "models" / "linked" / "data"
        assert os.path.samefile(stored_data, src)
        assert src.stat().st_mode & 0o222 == 0  # one inode: the source name sees it read-only
    moved = src.rename(tmp_path / "kept")  # what the reducer does with its copy
    assert store.get_file("linked", tmp_path / "copy") == expected
    moved.unlink()
    assert b"".join(store.iter_chunks("linked")) == data
    assert store.stat("linked") == expected


def test_put_file_with_given_sha256_records_it(store, tmp_path):
    data = os.urandom(MiB + 3)
    sha = hashlib.sha256(data).hexdigest()
    for model_id, link in (("given", False), ("given-linked", True)):
        src = _write(tmp_path / model_id, data)
        assert store.put_file(model_id, src, sha256=sha.upper(), link=link) == StoredModel(model_id, sha, len(data))
        assert b"".join(store.iter_chunks(model_id)) == data


@pytest.mark.parametrize("link", [False, True])
def test_wrong_given_sha256_is_never_served_as_good(store, tmp_path, link):
    """The store may trust the caller's hash, but a wrong one is caught: refused at once
    by a backend that reads the data anyway (nothing stored), else on the first read."""
    data = os.urandom(MiB)
    src = _write(tmp_path / "src", data)
    wrong = hashlib.sha256(b"some other model").hexdigest()
    if isinstance(store, S3ModelStore):
        with pytest.raises(ModelStoreError, match="liar.*not the given"):
            store.put_file("liar", src, sha256=wrong, link=link)
        assert not store.exists("liar")
        assert store.list_ids() == []
        return
    assert store.put_file("liar", src, sha256=wrong, link=link).sha256 == wrong
    out_dir = tmp_path / "out"
    with pytest.raises(ModelStoreError, match="liar.*corrupt"):
        store.get_file("liar", out_dir / "liar.bin")
    assert list(out_dir.iterdir()) == []
    with pytest.raises(ModelStoreError, match="corrupt"):
        for _ in store.iter_chunks("liar"):
            pass


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "0" * 63, 1234])
def test_malformed_given_sha256_is_refused_before_writing(store, tmp_path, bad):
    src = _write(tmp_path / "src", b"model")
    with pytest.raises(ValueError, match="invalid sha256"):
        store.put_file("m", src, sha256=bad)
    assert store.list_ids() == []


# ---- immutability and ids -------------------------------------------------


def test_duplicate_id_is_refused_and_original_kept(store, tmp_path):
    first = store.put_stream("dup", [b"original"])
    with pytest.raises(ModelExistsError, match="dup"):
        store.put_stream("dup", [b"replacement"])
    with pytest.raises(ModelExistsError, match="dup"):
        store.put_file("dup", _write(tmp_path / "other", b"other"))
    with pytest.raises(ModelExistsError, match="dup"):
        store.put_file("dup", tmp_path / "other", link=True, sha256=hashlib.sha256(b"other").hexdigest())
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


def _drain(store: ModelStore, model_id: str) -> tuple[bytes, BaseException | None, bool]:
    """What a consumer of iter_chunks gets: (the bytes, the error, whether the
    error came before the first byte, i.e. from the iter_chunks call itself)."""
    try:
        chunks = store.iter_chunks(model_id, chunk_size=MiB)
    except ModelStoreError as exc:
        return b"", exc, True
    received = bytearray()
    try:
        for chunk in chunks:
            received += chunk
    except ModelStoreError as exc:
        return bytes(received), exc, False
    return bytes(received), None, False


@pytest.mark.parametrize("offset", [0, 2 * MiB, -1], ids=["first-byte", "middle", "last-byte"])
def test_a_flipped_byte_never_streams_as_a_complete_model(store, tmp_path, offset):
    """A consumer that trusts a byte count (HTTP Content-Length) must see a short
    transfer, not the recorded size followed by an exception it may never look at."""
    data = os.urandom(3 * MiB + 17)
    stored = store.put_file("flipped", _write(tmp_path / "src", data))
    _corrupt(store, "flipped", offset=offset)

    received, error, _ = _drain(store, "flipped")

    assert isinstance(error, ModelCorruptError) and "flipped" in str(error)
    assert len(received) < stored.size
    assert store.stat("flipped") == stored


def test_a_truncated_model_is_refused_and_never_streams_whole(store, tmp_path):
    data = os.urandom(2 * MiB + 5)
    stored = store.put_file("short", _write(tmp_path / "src", data))
    _corrupt(store, "short", truncate=7)

    received, error, before_any_byte = _drain(store, "short")

    assert isinstance(error, ModelCorruptError) and "short" in str(error)
    assert len(received) < stored.size - 7
    if isinstance(store, LocalModelStore):
        # the file's size is known without reading it: refused before any byte goes out
        assert before_any_byte
        with pytest.raises(ModelCorruptError, match="2097150 bytes at rest, 2097157 recorded"):
            store.get_file("short", tmp_path / "copy")
    # (S3: the object's size is the store's record; a reader with the trail's
    # record compares the two before sending, see reducer/downloads.py)


class _FileSizeLimit:
    """RLIMIT_FSIZE for this process: the kernel itself fails writes past the limit
    (EFBIG; Python ignores SIGXFSZ), a real write failure without root or a mount."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self) -> None:
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def __exit__(self, *exc: object) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


def test_a_write_the_medium_refuses_is_named_and_leaves_nothing(store, tmp_path):
    store.put_stream("keep", [b"k"])
    with _FileSizeLimit(MiB):
        with pytest.raises(StorageFullError, match=r"file too large under .*(writing|spooling) model big") as info:
            store.put_stream("big", [b"x" * MiB, b"y" * MiB])
    assert info.value.errno == errno.EFBIG
    assert "Errno" not in str(info.value)
    assert not store.exists("big")
    assert store.list_ids() == ["keep"]
    if isinstance(store, LocalModelStore):
        assert os.listdir(store.root / "tmp") == []  # nothing half-written left behind
    assert store.put_stream("big", [b"fits now"]).size == 8  # the id is still free


# ---- backend-specific -----------------------------------------------------


def test_local_published_model_is_read_only_and_survives_reopen(tmp_path):
    store = LocalModelStore(tmp_path)
    stored = store.put_stream("m", [b"data"])
    mode = (tmp_path / "models" / "m" / "data").stat().st_mode
    assert mode & 0o222 == 0
    assert LocalModelStore(tmp_path).stat("m") == stored
    assert os.listdir(tmp_path / "tmp") == []


class _HashSpy:
    """Stands in for hashlib in a module: counts sha256 objects made, delegates the rest."""

    def __init__(self) -> None:
        self.made = 0

    def sha256(self, *args):
        self.made += 1
        return hashlib.sha256(*args)

    def __getattr__(self, name):
        return getattr(hashlib, name)


@pytest.mark.parametrize("link", [False, True])
def test_local_put_file_with_given_sha256_does_not_hash(tmp_path, monkeypatch, link):
    store = LocalModelStore(tmp_path / "store")
    data = os.urandom(MiB)
    src = _write(tmp_path / "src", data)
    spy = _HashSpy()
    with monkeypatch.context() as patch:
        for module in (local_module, model_store_module):
            patch.setattr(module, "hashlib", spy)
        store.put_file("trusted", src, sha256=hashlib.sha256(data).hexdigest(), link=link)
        assert spy.made == 0
        store.put_file("hashed", src, link=link)  # the spy does see the store hash
        assert spy.made == 1
    assert b"".join(store.iter_chunks("trusted")) == data  # reads still verify


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_local_link_that_fails_falls_back_to_a_copy(tmp_path, monkeypatch, caplog, code):
    store = LocalModelStore(tmp_path / "store")
    data = os.urandom(MiB + 1)
    src = _write(tmp_path / "src", data)
    mode = src.stat().st_mode

    def no_link(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(local_module.os, "link", no_link)
    with caplog.at_level(logging.DEBUG, logger="fedtier.storage.local"):
        stored = store.put_file("copied", src, link=True)
    assert stored == StoredModel("copied", hashlib.sha256(data).hexdigest(), len(data))
    stored_data = store.root / "models" / "copied" / "data"
    assert not os.path.samefile(stored_data, src)
    assert stored_data.stat().st_mode & 0o222 == 0
    assert src.stat().st_mode == mode  # a copy leaves the caller's file as it was
    assert any("copying" in r.getMessage() for r in caplog.records)
    src.unlink()
    assert b"".join(store.iter_chunks("copied")) == data


def test_local_link_it_cannot_make_read_only_falls_back_to_a_copy(tmp_path, monkeypatch):
    """A linked file the store may not chmod (someone else's): copied instead, so the
    stored data is still read-only and the store's own."""
    store = LocalModelStore(tmp_path / "store")
    data = os.urandom(1000)
    src = _write(tmp_path / "src", data)
    real_chmod = os.chmod
    refused: list[str] = []

    def chmod_refusing_the_link(path, mode, **kwargs):
        if os.path.exists(path) and os.path.samefile(path, src):
            refused.append(os.fspath(path))
            raise PermissionError(errno.EPERM, "Operation not permitted", os.fspath(path))
        return real_chmod(path, mode, **kwargs)

    monkeypatch.setattr(local_module.os, "chmod", chmod_refusing_the_link)
    assert store.put_file("foreign", src, link=True).size == len(data)
    assert refused  # the link was made, then given up
    stored_data = store.root / "models" / "foreign" / "data"
    assert not os.path.samefile(stored_data, src)
    assert stored_data.stat().st_mode & 0o222 == 0
    assert b"".join(store.iter_chunks("foreign")) == data


def test_local_given_sha256_copy_of_a_source_that_grows_stores_nothing(tmp_path, monkeypatch):
    """With the hash given, the size recorded is checked against the source's instead."""
    store = LocalModelStore(tmp_path / "store")
    src = _write(tmp_path / "src", b"model")
    real_copy = local_module.shutil.copyfileobj

    def copy_while_the_source_grows(fsrc, fdst, length=0):
        real_copy(fsrc, fdst, length)
        fdst.write(b" and more")  # as if the writer were still appending

    monkeypatch.setattr(local_module.shutil, "copyfileobj", copy_while_the_source_grows)
    with pytest.raises(ModelStoreError, match="grown.*changed size"):
        store.put_file("grown", src, sha256=hashlib.sha256(b"model").hexdigest())
    assert store.list_ids() == []
    assert os.listdir(store.root / "tmp") == []


def test_local_linked_put_losing_a_race_leaves_nothing_behind(tmp_path, monkeypatch):
    """Another writer published the id after the early check: the linked blob's work
    dir goes, the winner and the caller's file stay."""
    store = LocalModelStore(tmp_path / "store")
    first = store.put_stream("raced", [b"winner"])
    src = _write(tmp_path / "src", b"loser")
    monkeypatch.setattr(store, "_exists", lambda model_id: False)  # miss the early check
    with pytest.raises(ModelExistsError, match="raced"):
        store.put_file("raced", src, link=True, sha256=hashlib.sha256(b"loser").hexdigest())
    assert os.listdir(store.root / "tmp") == []
    assert src.read_bytes() == b"loser"
    assert store.stat("raced") == first
    assert b"".join(store.iter_chunks("raced")) == b"winner"


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


def test_s3_put_file_with_given_sha256_skips_the_hashing_pass(modelstore_moto_endpoint, tmp_path, monkeypatch):
    store = _s3_store(modelstore_moto_endpoint, _new_bucket())
    data = os.urandom(MiB)
    src = _write(tmp_path / "src", data)

    def hashing_pass(path):
        raise AssertionError("put_file read the source to hash it although its sha256 was given")

    monkeypatch.setattr(s3_module, "iter_file", hashing_pass)
    stored = store.put_file("vouched", src, sha256=hashlib.sha256(data).hexdigest(), link=True)
    assert stored == StoredModel("vouched", hashlib.sha256(data).hexdigest(), len(data))
    assert b"".join(store.iter_chunks("vouched")) == data


class _DictStore(ModelStore):
    """The smallest backend: keeps the base class's own _put_file."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[StoredModel, bytes]] = {}

    def _put_stream(self, model_id, chunks):
        if model_id in self.blobs:
            raise ModelExistsError(model_id)
        data = b"".join(chunks)  # an iterator that raises stores nothing
        stored = StoredModel(model_id, hashlib.sha256(data).hexdigest(), len(data))
        self.blobs[model_id] = (stored, data)
        return stored

    def _stat(self, model_id):
        if model_id not in self.blobs:
            raise ModelNotFoundError(model_id)
        return self.blobs[model_id][0]

    def _list_ids(self):
        return list(self.blobs)

    def _raw_chunks(self, stored, chunk_size):
        yield self.blobs[stored.model_id][1]


def test_default_put_file_accepts_link_and_checks_a_given_sha256(tmp_path):
    store = _DictStore()
    src = _write(tmp_path / "src", b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    assert store.put_file("ok", src, sha256=sha, link=True).sha256 == sha
    with pytest.raises(ModelStoreError, match="bad.*not the given"):
        store.put_file("bad", src, sha256=hashlib.sha256(b"other").hexdigest())
    assert store.list_ids() == ["ok"]


def test_s3_full_bucket_is_named_and_not_retried(modelstore_moto_endpoint, monkeypatch):
    """MinIO answers 507 XMinioStorageFull when its drives are full: retrying cannot
    help, so it fails at once, as a StorageFullError naming the bucket."""
    from minio.error import S3Error

    store = _s3_store(modelstore_moto_endpoint, _new_bucket(), retries=3, backoff_s=0.01)
    calls = itertools.count()

    def full(*args, **kwargs):
        next(calls)
        raise S3Error(None, "XMinioStorageFull", "Storage backend has reached its minimum free drive threshold.",
                      "/", "req", "host")

    monkeypatch.setattr(store._client, "put_object", full)
    with pytest.raises(StorageFullError, match=f"no space left in bucket '{store.bucket}'.*model full"):
        store.put_stream("full", [b"data"])
    assert next(calls) == 1
    assert not store.exists("full")
