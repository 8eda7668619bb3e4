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
from fedtier.transport.streams import TransferError, file_chunks, receive_to_file, xxh3_file

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
    expected, checksum = sha256_of(source), xxh3_file(source)

    # the content hash travels as the sender states it (the trail's, for the reducer's push)
    uploaded = client.upload_model(source, "big-model", timeout=600, sha256=expected)
    assert uploaded.size == GiB and uploaded.xxh3 == checksum and uploaded.sha256 == expected
    assert sha256_of(server.cache.path("big-model")) == expected
    source.unlink()  # keep disk use bounded: the combiner's copy is the reference now

    received = client.download_model("big-model", tmp_path / "back", timeout=600)
    assert received.size == GiB and received.xxh3 == checksum and received.sha256 == expected
    assert sha256_of(tmp_path / "back") == expected


def test_an_upload_without_a_content_hash_is_checked_and_kept_without_one(tmp_path: Path, combiner) -> None:
    """A client's update carries only the checksum: nobody hashes it with sha256."""
    server, client = combiner
    source = tmp_path / "update"
    source.write_bytes(os.urandom(3 << 20))
    # admitted as an open task's update is (the runner's arrival_check admits only those)
    uploaded = server.cache.receive(file_chunks(source, client_name="alice"), lambda header: None)
    assert uploaded.sha256 == "" and uploaded.xxh3 == xxh3_file(source)
    uploaded = pb.UploadResponse(model_id=uploaded.path.name)
    assert server.cache.held(uploaded.model_id).sha256 == ""
    assert server.cache.path(uploaded.model_id).read_bytes() == source.read_bytes()


def test_truncated_corrupted_and_oversized_streams_are_rejected(tmp_path: Path) -> None:
    data = tmp_path / "m"
    data.write_bytes(os.urandom(3 << 20))
    chunks = list(file_chunks(data, model_id="m", chunk_size=1 << 20))
    cases = {
        "stream ended after": chunks[:-2] + chunks[-1:],                     # a data chunk lost
        "without a trailer": chunks[:-1],
        "checksum mismatch": chunks[:1] + [pb.ModelChunk(data=b"x" * len(chunks[1].data))] + chunks[2:],
        "must start with a header": chunks[1:],
        "data after trailer": chunks + [pb.ModelChunk(data=b"x")],
        "carries no xxh3": chunks[:-1] + [pb.ModelChunk(trailer=pb.TransferTrailer())],
        "did not announce": chunks[:-1] + [pb.ModelChunk(trailer=pb.TransferTrailer(
            sha256="0" * 64, xxh3=chunks[-1].trailer.xxh3))],
        "announced a sha256 the trailer does not state": [pb.ModelChunk(header=pb.TransferHeader(
            model_id="m", size=3 << 20, sha256_follows=True))] + chunks[1:],
        "not 64 lowercase hex": [pb.ModelChunk(header=pb.TransferHeader(model_id="m", size=3 << 20,
                                                                        sha256_follows=True))] + chunks[1:-1]
        + [pb.ModelChunk(trailer=pb.TransferTrailer(sha256="../../etc", xxh3=chunks[-1].trailer.xxh3))],
    }
    for message, stream in cases.items():
        target = tmp_path / f"out-{len(message)}"
        with pytest.raises(TransferError, match=message):
            receive_to_file(iter(stream), lambda header: target)
        assert not target.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"
    with pytest.raises(TransferError, match="over the limit"):
        receive_to_file(iter(chunks), lambda header: tmp_path / "x", max_size=1 << 20)
    # a stated sha256 that is not the data's: taken as stated by default, refused when verified
    wrong = hashlib.sha256(b"another model").hexdigest()
    claimed = list(file_chunks(data, model_id="m", chunk_size=1 << 20, sha256=wrong))
    assert receive_to_file(iter(claimed), lambda header: tmp_path / "trusted").sha256 == wrong
    with pytest.raises(TransferError, match="sha256 mismatch"):
        receive_to_file(iter(claimed), lambda header: tmp_path / "verified", verify_sha256=True)
    assert not (tmp_path / "verified").exists()
    right = list(file_chunks(data, model_id="m", sha256=sha256_of(data)))
    assert receive_to_file(iter(right), lambda header: tmp_path / "ok", verify_sha256=True).sha256 == sha256_of(data)


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
    """The combiner sends a model with the checksum it arrived with, never computed again per
    download, so a file damaged on its disk since is refused by the receiver."""
    import fedtier.combiner.model_cache as cache_module

    server, client = combiner
    source = tmp_path / "m"
    source.write_bytes(os.urandom(3 << 20))
    client.upload_model(source, "shared", sha256=sha256_of(source))
    known = []  # the checksum each download is sent with; None: computed on the way
    real = cache_module.file_chunks
    monkeypatch.setattr(cache_module, "file_chunks", lambda path, **kw: known.append(kw["xxh3"]) or real(path, **kw))
    for i in range(3):
        received = client.download_model("shared", tmp_path / f"copy{i}")
        assert received.sha256 == sha256_of(source) and received.xxh3 == xxh3_file(source)
    assert known == [xxh3_file(source)] * 3  # known since upload: never computed again
    # a model the combiner wrote itself is hashed on its first download only, on the way...
    written = server.cache.path("written")
    written.write_bytes(os.urandom(1 << 20))
    for i in range(2):
        received = client.download_model("written", tmp_path / f"w{i}")
        assert received.sha256 == sha256_of(written) and received.xxh3 == xxh3_file(written)
    assert known[3:] == [None, xxh3_file(written)]
    assert server.cache.held("written").sha256 == sha256_of(written)  # what the reducer commits
    # ...and if bytes change behind the cache's back, at rest, the receiver refuses them
    for model_id in ("written", "shared"):
        path = server.cache.path(model_id)
        damaged = bytearray(path.read_bytes())
        damaged[len(damaged) // 2] ^= 1  # one bit, same size
        path.write_bytes(bytes(damaged))
        with pytest.raises(TransferError, match="checksum mismatch"):
            client.download_model(model_id, tmp_path / f"{model_id}-bad")
        assert not (tmp_path / f"{model_id}-bad").exists()
