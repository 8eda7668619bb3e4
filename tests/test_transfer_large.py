"""A 1 GiB model crosses the chunked stream intact both ways; broken streams leave nothing behind."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedtier.combiner.server import CombinerServer, CombinerSettings
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.combiner_client import CombinerClient
from fedtier.transport.streams import TransferError, file_chunks, receive_to_file

GiB = 1 << 30


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def combiner(tmp_path: Path):
    server = CombinerServer(CombinerSettings(name="c", port=0, work_dir=tmp_path / "combiner"))
    port = server.start()
    client = CombinerClient(f"127.0.0.1:{port}")
    yield server, client
    client.close()
    server.stop(0)


def test_one_gib_model_uploads_and_downloads_intact(tmp_path: Path, combiner) -> None:
    server, client = combiner
    source = tmp_path / "big"
    rng = np.random.default_rng(1)
    block = rng.integers(0, 256, size=16 << 20, dtype=np.uint8)
    with open(source, "wb") as f:
        for i in range(GiB // block.size):  # distinct blocks, so a reordered chunk changes the hash
            block[:8] = np.frombuffer(i.to_bytes(8, "little"), dtype=np.uint8)
            f.write(block.tobytes())
    expected = sha256_of(source)

    uploaded = client.upload_model(source, "big-model", timeout=600)
    assert uploaded.size == GiB and uploaded.sha256 == expected
    assert sha256_of(server.cache.path("big-model")) == expected
    source.unlink()  # keep disk use bounded: the combiner's copy is the reference now

    received = client.download_model("big-model", tmp_path / "back", timeout=600)
    assert received.size == GiB and received.sha256 == expected
    assert sha256_of(tmp_path / "back") == expected


def test_truncated_corrupted_and_oversized_streams_are_rejected(tmp_path: Path) -> None:
    data = tmp_path / "m"
    data.write_bytes(os.urandom(3 << 20))
    chunks = list(file_chunks(data, model_id="m", chunk_size=1 << 20))
    cases = {
        "stream ended after": chunks[:-2] + chunks[-1:],                     # a data chunk lost
        "without a trailer": chunks[:-1],
        "sha256 mismatch": chunks[:1] + [pb.ModelChunk(data=b"x" * len(chunks[1].data))] + chunks[2:],
        "must start with a header": chunks[1:],
        "data after trailer": chunks + [pb.ModelChunk(data=b"x")],
    }
    for message, stream in cases.items():
        target = tmp_path / f"out-{len(message)}"
        with pytest.raises(TransferError, match=message):
            receive_to_file(iter(stream), lambda header: target)
        assert not target.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"
    with pytest.raises(TransferError, match="over the limit"):
        receive_to_file(iter(chunks), lambda header: tmp_path / "x", max_size=1 << 20)


def test_upload_cannot_overwrite_an_existing_model(tmp_path: Path, combiner) -> None:
    server, client = combiner
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"first model")
    second.write_bytes(b"second model")
    client.transfer.UploadModel(file_chunks(first, model_id="same"))
    with pytest.raises(grpc.RpcError) as error:
        client.transfer.UploadModel(file_chunks(second, model_id="same"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.cache.path("same").read_bytes() == b"first model"
    with pytest.raises(grpc.RpcError) as error:
        list(client.transfer.DownloadModel(pb.DownloadRequest(model_id="../etc/passwd")))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_served_models_are_hashed_once_and_corruption_is_still_caught(tmp_path: Path, combiner, monkeypatch) -> None:
    """The combiner hashes a model once, not once per download; a receiver still verifies."""
    import fedtier.combiner.model_cache as cache_module

    server, client = combiner
    source = tmp_path / "m"
    source.write_bytes(os.urandom(3 << 20))
    client.upload_model(source, "shared")
    known = []  # the digest each download is sent with; None: hashed on the way
    real = cache_module.file_chunks
    monkeypatch.setattr(cache_module, "file_chunks", lambda path, **kw: known.append(kw["sha256"]) or real(path, **kw))
    for i in range(3):
        assert client.download_model("shared", tmp_path / f"copy{i}").sha256 == sha256_of(source)
    assert known == [sha256_of(source)] * 3  # known since upload: never re-hashed
    # a model the combiner wrote itself is hashed on its first download only, on the way...
    written = server.cache.path("written")
    written.write_bytes(os.urandom(1 << 20))
    for i in range(2):
        assert client.download_model("written", tmp_path / f"w{i}").sha256 == sha256_of(written)
    assert known[3:] == [None, sha256_of(written)]
    # ...and if its bytes change behind the cache's back, the receiver refuses them
    written.write_bytes(os.urandom(1 << 20))
    with pytest.raises(TransferError, match="sha256 mismatch"):
        client.download_model("written", tmp_path / "w-bad")
    assert not (tmp_path / "w-bad").exists()
