"""Every size and count an outside party controls is bounded, refused before the work, named.

The names new with the bounds (fedtier.limits, PackageTooLarge) are imported in the tests
that use them, so the rest of this file runs against the code before them and fails there.

The network checks run against a real combiner process over gRPC; the REST checks use
Flask's test client (the reducer's bounds are decided per request, in-process). Each
refusal is checked for what it leaves behind: no file, no record, no state change.
"""
from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from conftest import ProcessGroup, free_port, wait_for_port
from fedtier.combiner.model_cache import ModelCache
from fedtier.config import ConfigError, Settings
from fedtier.helpers import get_helper
from fedtier.package import sha256_hex, unpack
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.reducer.app import create_app
from fedtier.reducer.combiner_client import CombinerClient
from fedtier.round_config import RoundConfig
from fedtier.transport.channel import make_channel
from fedtier.transport.streams import file_chunks
from fedtier.transport.wire import ModelTransferStub

MiB = 1 << 20
helper = get_helper("numpy")
GOOD_YAML = b"entry_points:\n  train:\n    command: x\n  validate:\n    command: y\n"


# ---------------------------------------------------------------- a combiner process
@pytest.fixture
def combiner(procs: ProcessGroup, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    work = tmp_path / "combiner"
    proc = procs.start("combiner", "combiner", "--name", "c", "--host", "127.0.0.1", "--port", str(port),
                       "--work-dir", str(work), env={"FEDTIER_MAX_UPLOAD_IDLE_SECONDS": "1"})
    wait_for_port(port, proc=proc)
    yield f"127.0.0.1:{port}", work / "models"


def claimed(size: int, client: str, sent: list[int]) -> Iterator[pb.ModelChunk]:
    """A header claiming ``size`` bytes, then zeros for as long as the receiver takes them."""
    yield pb.ModelChunk(header=pb.TransferHeader(size=size, client_name=client))
    block = bytes(MiB)
    for _ in range(size // MiB):
        sent.append(MiB)
        yield pb.ModelChunk(data=block)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())  # dot files (partial uploads) included


def test_an_upload_outside_any_round_is_refused_at_its_header_and_leaves_nothing(combiner) -> None:
    address, models = combiner
    transfer = ModelTransferStub(make_channel(address))
    sent: list[int] = []
    error = refusal(lambda: transfer.UploadModel(claimed(512 * MiB, "mallory", sent), timeout=30))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no training round is running" in error.details()
    assert sum(sent) < 64 * MiB, f"{sum(sent) >> 20} MiB of a refused upload were sent"
    assert files_in(models) == []


def test_an_upload_that_stops_sending_is_cancelled_and_leaves_nothing(combiner, procs: ProcessGroup) -> None:
    address, models = combiner
    transfer = ModelTransferStub(make_channel(address))

    def stalls() -> Iterator[pb.ModelChunk]:  # a named push (no tokens here), which a round does not gate
        yield pb.ModelChunk(header=pb.TransferHeader(model_id="slow", size=8 * MiB, client_name="reducer"))
        yield pb.ModelChunk(data=bytes(MiB))
        time.sleep(4)  # FEDTIER_MAX_UPLOAD_IDLE_SECONDS is 1 for this combiner
        yield pb.ModelChunk(data=bytes(MiB))

    started = time.monotonic()
    error = refusal(lambda: transfer.UploadModel(stalls(), timeout=30))
    assert error.code() == grpc.StatusCode.CANCELLED and time.monotonic() - started < 4
    # the sender learns of the cancel at once; the combiner's thread then deletes the partial file
    deadline = time.monotonic() + 10
    while files_in(models) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert files_in(models) == []
    assert "FEDTIER_MAX_UPLOAD_IDLE_SECONDS" in procs.log("combiner")


def test_during_a_round_only_an_open_task_uploads_and_only_what_an_update_can_be(combiner, tmp_path: Path) -> None:
    address, models = combiner
    reducer = CombinerClient(address)
    global_model = tmp_path / "global"
    helper.save({"w": np.zeros(1000, np.float32)}, global_model)
    reducer.upload_model(global_model, "g", timeout=10)
    config = RoundConfig(clients_required=1, round_timeout=30, wait_for_clients=20, helper="numpy", validate=False)
    result: list[pb.RoundResult] = []
    round_thread = threading.Thread(target=lambda: result.append(reducer.start_round(pb.RoundRequest(
        round_id="r1", session_id="s", kind=pb.TRAINING, model_id="g", config_json=config.to_json()), timeout=60)))
    channel = make_channel(address)
    combiner_stub, transfer = rpc.CombinerStub(channel), ModelTransferStub(channel)
    combiner_stub.Connect(pb.ConnectRequest(client_name="alice"), timeout=5)
    tasks = combiner_stub.TaskStream(pb.TaskStreamRequest(client_name="alice"))
    round_thread.start()
    task = next(iter(tasks))
    update = tmp_path / "update"
    helper.save({"w": np.ones(1000, np.float32)}, update)

    error = refusal(lambda: transfer.UploadModel(file_chunks(update, client_name="bob"), timeout=10))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "'bob' holds no open training task" in error.details()

    sent: list[int] = []  # alice holds a task, but an update is the global model's size
    error = refusal(lambda: transfer.UploadModel(claimed(256 * MiB, "alice", sent), timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "FEDTIER_MAX_UPDATE_SLACK_BYTES" in error.details()
    assert sum(sent) < 64 * MiB, f"{sum(sent) >> 20} MiB of a refused upload were sent"

    first = transfer.UploadModel(file_chunks(update, client_name="alice"), timeout=10)
    transfer.UploadModel(file_chunks(update, client_name="alice"), timeout=10)  # a retry: allowed once
    error = refusal(lambda: transfer.UploadModel(file_chunks(update, client_name="alice"), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "FEDTIER_MAX_UPLOADS_PER_TASK" in error.details()
    assert len(files_in(models)) == 3  # the global model and alice's two uploads: nothing partial

    ack = combiner_stub.ReportUpdate(pb.ModelUpdate(client_name="alice", task_id=task.task_id, round_id="r1",
                                                    model_id=first.model_id, parent_model_id=task.model_id,
                                                    num_examples=10), timeout=10)
    assert ack.ok, ack.message
    round_thread.join(60)
    assert result and result[0].success, result
    assert files_in(models) == sorted(["g", result[0].model_id])  # the unreported upload is gone too
    tasks.cancel()
    channel.close()
    reducer.close()


def test_reports_over_the_bound_are_refused_naming_it(tmp_path: Path) -> None:
    from fedtier.combiner.registry import ClientRegistry
    from fedtier.combiner.round import ActiveRound
    from fedtier.combiner.runner import RoundRunner

    runner = RoundRunner("c", ClientRegistry(10.0), ModelCache(tmp_path / "cache"))
    runner._current = ActiveRound(round_id="r1", kind=pb.VALIDATION, model_id="g")
    runner._current.expect("t", "alice")
    big = json.dumps({f"m{i}": 0.5 for i in range(10_000)})
    ack = runner.submit_validation(pb.ValidationReport(client_name="alice", task_id="t", round_id="r1",
                                                       metrics_json=big))
    assert not ack.ok and "FEDTIER_MAX_REPORT_BYTES" in ack.message
    assert not runner._current.answered  # the task is still open: nothing was recorded
    assert runner.submit_validation(pb.ValidationReport(client_name="alice", task_id="t", round_id="r1",
                                                        metrics_json='{"accuracy": 0.5}')).ok
    # a progress message too: over its own bound, refused naming it, and the task's state unchanged
    from fedtier.combiner.round import ProgressRefused

    runner._current = ActiveRound(round_id="r2", kind=pb.TRAINING, model_id="g")
    runner._current.expect("t", "alice")
    with pytest.raises(ProgressRefused, match="FEDTIER_MAX_PROGRESS_BYTES") as refused:
        runner.progress(pb.TaskProgress(client_name="alice", task_id="t" + "x" * 2000, round_id="r2",
                                        phase=pb.PHASE_TRAINING))
    assert refused.value.code.name == "INVALID_ARGUMENT"
    assert runner._current.live().clients[0].state == "chosen"
    assert runner.progress(pb.TaskProgress(client_name="alice", task_id="t", round_id="r2",
                                           phase=pb.PHASE_TRAINING)).ok
    assert runner._current.live().clients[0].state == "training"


def test_partial_files_left_by_a_dead_process_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / ".abc.0123.part").write_bytes(b"x" * 1000)
    (root / "kept").write_bytes(b"model")
    ModelCache(root)
    assert files_in(root) == ["kept"]


# ---------------------------------------------------------------- the reducer's REST API
@pytest.fixture
def reducer_app(tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path), poll_interval_s=None)
    yield app
    app.extensions["fedtier"].close()


def zero_size_tensors(count: int) -> bytes:
    entries = [b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(count)]
    raw = b"{" + b",".join(entries) + b',"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    raw += b" " * (-(len(raw) + 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(4)


def test_a_seed_of_200k_zero_size_tensors_is_refused_fast_naming_the_bound(reducer_app) -> None:
    data = zero_size_tensors(200_000)
    client = reducer_app.test_client()
    started = time.perf_counter()
    reply = client.post("/seed", data={"seed": (io.BytesIO(data), "seed")}, content_type="multipart/form-data")
    elapsed = time.perf_counter() - started
    assert reply.status_code == 400 and "FEDTIER_MAX_MODEL_TENSORS" in reply.json["error"], reply.json
    assert elapsed < 2.0, f"refusing took {elapsed:.2f}s"
    assert client.get("/api/v1/status").json["state"] == "setup"  # not seeded
    assert reducer_app.extensions["fedtier"].trail.all() == []


def test_a_seed_over_the_model_bound_gets_413_before_it_is_read(tmp_path: Path) -> None:
    from fedtier.limits import Limits

    app = create_app(Settings(data_dir=tmp_path, limits=Limits(model_bytes=64 << 10)), poll_interval_s=None)
    try:
        data = helper.to_bytes({"w": np.zeros(100_000, np.float32)})  # 400 KB
        reply = app.test_client().post("/seed", data={"seed": (io.BytesIO(data), "seed")},
                                       content_type="multipart/form-data")
        assert reply.status_code == 413, reply.json
        assert reply.json["limit"] == "FEDTIER_MAX_MODEL_BYTES" and reply.json["field"] == "seed"
        assert "FEDTIER_MAX_MODEL_BYTES" in reply.json["error"]
        assert app.extensions["fedtier"].trail.all() == []
    finally:
        app.extensions["fedtier"].close()


def bomb(unpacked: int) -> bytes:
    """A real compute package whose one data file is ``unpacked`` zeros, a few hundred KiB
    gzip'd. Everything after that file's tar header is zeros (its data, its padding, the
    end-of-archive blocks), so it is one gzip member of 4 MiB of zeros repeated: gzip files
    may hold many members, and compressing 4 MiB once keeps the test fast."""
    spec = tarfile.TarInfo("fedn.yaml")
    spec.size = len(GOOD_YAML)
    data = tarfile.TarInfo("data.bin")
    data.size = unpacked
    head = spec.tobuf() + GOOD_YAML + bytes(-len(GOOD_YAML) % 512) + data.tobuf()
    block = 4 * MiB
    assert unpacked % block == 0
    return (gzip.compress(head) + gzip.compress(bytes(block)) * (unpacked // block)
            + gzip.compress(bytes(2 * tarfile.BLOCKSIZE)))


@pytest.fixture(scope="module")
def package_bomb() -> bytes:
    data = bomb(300 * MiB)
    assert len(data) < 1 * MiB  # 300 MiB unpacked
    return data


def test_a_package_bomb_is_refused_at_upload_naming_the_bound_and_nothing_is_stored(reducer_app, package_bomb) -> None:
    client = reducer_app.test_client()
    started = time.perf_counter()
    reply = client.post("/package", data={"package": (io.BytesIO(package_bomb), "package.tgz")},
                        content_type="multipart/form-data")
    elapsed = time.perf_counter() - started
    assert reply.status_code == 413, reply.json
    assert reply.json["limit"] == "FEDTIER_MAX_PACKAGE_UNPACKED_BYTES" and reply.json["field"] == "package"
    assert elapsed < 1.0, f"refusing took {elapsed:.2f}s: was the bomb unpacked?"
    assert client.get("/api/v1/package").status_code == 404  # nothing recorded
    assert reducer_app.extensions["fedtier"].models.list_ids() == []


def test_a_bomb_is_refused_on_the_client_too_before_anything_is_extracted(tmp_path: Path, package_bomb) -> None:
    from fedtier.package import PackageTooLarge

    with pytest.raises(PackageTooLarge, match="FEDTIER_MAX_PACKAGE_UNPACKED_BYTES"):
        unpack(package_bomb, sha256_hex(package_bomb), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_the_decompressed_stream_is_bounded_whatever_the_headers_say() -> None:
    """Counted on the decompressor's output, not only on the sizes the tar headers declare:
    a pax record is tar metadata that no member's size counts, yet it is unpacked too."""
    from fedtier.limits import Limits
    from fedtier.package import PackageTooLarge, check

    small = Limits(package_unpacked_bytes=1 * MiB)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            spec = tarfile.TarInfo("fedn.yaml")
            spec.size = len(GOOD_YAML)
            tar.addfile(spec, io.BytesIO(GOOD_YAML))
            padded = tarfile.TarInfo("x.py")
            padded.pax_headers = {"comment": "x" * (2 * MiB)}  # a 2 MiB header, zero declared bytes
            tar.addfile(padded, io.BytesIO(b""))
    with pytest.raises(PackageTooLarge, match="FEDTIER_MAX_PACKAGE_UNPACKED_BYTES"):
        check(raw.getvalue(), small)


def test_too_many_files_and_too_many_bytes_are_refused_naming_each_bound(tmp_path: Path) -> None:
    from fedtier.limits import Limits
    from fedtier.package import PackageTooLarge, check

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        spec = tarfile.TarInfo("fedn.yaml")
        spec.size = len(GOOD_YAML)
        tar.addfile(spec, io.BytesIO(GOOD_YAML))
        for i in range(20):
            tar.addfile(tarfile.TarInfo(f"f{i}.py"), io.BytesIO(b""))
    data = buffer.getvalue()
    assert len(check(data)) == 21
    with pytest.raises(PackageTooLarge, match="FEDTIER_MAX_PACKAGE_FILES"):
        check(data, Limits(package_files=10))
    with pytest.raises(PackageTooLarge, match="FEDTIER_MAX_PACKAGE_BYTES"):
        check(data, Limits(package_bytes=100))
    app = create_app(Settings(data_dir=tmp_path, limits=Limits(package_files=10)), poll_interval_s=None)
    try:  # the reducer applies its settings' bounds
        reply = app.test_client().post("/package", data={"package": (io.BytesIO(data), "p.tgz")},
                                       content_type="multipart/form-data")
        assert reply.status_code == 413 and reply.json["limit"] == "FEDTIER_MAX_PACKAGE_FILES", reply.json
    finally:
        app.extensions["fedtier"].close()


def test_a_large_task_setting_is_refused_at_start_naming_task(reducer_app) -> None:
    client = reducer_app.test_client()
    reply = client.post("/start", json={"rounds": 1, "task": {"blob": "x" * (20 * 10**6)}})  # 20 MB
    assert reply.status_code == 413 and reply.json["limit"] == "FEDTIER_MAX_JSON_BODY_BYTES", reply.json
    reply = client.post("/start", json={"rounds": 1, "task": {"blob": "x" * (100 << 10)}})  # fits the body
    assert reply.status_code == 400 and reply.json["field"] == "task", reply.json
    assert "FEDTIER_MAX_TASK_BYTES" in reply.json["error"]
    reply = client.post("/start", data={"rounds": "1", "task": json.dumps({"blob": "x" * (100 << 10)})})
    assert reply.status_code == 400 and reply.json["field"] == "task", reply.json  # the form says the same
    reply = client.post("/start", data={"rounds": "1", "task": "[" * 10_000 + "]" * 10_000})  # in a form field
    assert reply.status_code == 400 and "FEDTIER_MAX_JSON_DEPTH" in reply.json["error"], reply.json
    assert reducer_app.extensions["fedtier"].state.find("sessions") == []


def test_oversized_and_deeply_nested_json_bodies_are_refused_on_every_route(reducer_app) -> None:
    client = reducer_app.test_client()
    for path in ("/start", "/add", "/stop", "/login"):
        reply = client.post(path, data=b"{" + b" " * (2 * MiB) + b"}", content_type="application/json")
        assert reply.status_code == 413 and "FEDTIER_MAX_JSON_BODY_BYTES" in reply.json["error"], (path, reply.json)
    deep = b"[" * 10_000 + b"]" * 10_000
    for path in ("/start", "/add"):
        reply = client.post(path, data=deep, content_type="application/json")
        assert reply.status_code == 400 and reply.json["limit"] == "FEDTIER_MAX_JSON_DEPTH", (path, reply.json)


def test_the_depth_bound_is_the_setting_and_ignores_brackets_inside_strings() -> None:
    from fedtier import limits, strict_json

    limits.configure(limits.Limits(json_depth=3))
    try:
        assert strict_json.loads('{"a": [1, {"b": "[[\\"[["}]}') == {"a": [1, {"b": '[["[['}]}
        with pytest.raises(strict_json.JSONInputError) as deep:
            strict_json.loads('{"a": [1, {"b": []}]}')
        assert deep.value.limit == "FEDTIER_MAX_JSON_DEPTH" and "3 levels" in deep.value.message
    finally:
        limits.configure(None)


# ---------------------------------------------------------------- settings
def test_every_bound_has_a_setting_read_and_checked() -> None:
    from fedtier.limits import MAX_ROUND_CONFIG_BYTES, Limits, configure
    from fedtier.transport.channel import MESSAGE_LIMIT

    settings = Settings.from_env({"FEDTIER_MAX_MODEL_TENSORS": "7", "FEDTIER_MAX_PACKAGE_FILES": "3"})
    assert settings.limits.model_tensors == 7 and settings.limits.package_files == 3
    assert settings.limits.json_body_bytes == Limits().json_body_bytes
    with pytest.raises(ConfigError, match="FEDTIER_MAX_JSON_DEPTH"):
        Settings.from_env({"FEDTIER_MAX_JSON_DEPTH": "0"})
    with pytest.raises(ConfigError, match="FEDTIER_MAX_TASK_BYTES"):
        Settings.from_env({"FEDTIER_MAX_TASK_BYTES": "lots"})
    assert 2 * MAX_ROUND_CONFIG_BYTES <= MESSAGE_LIMIT  # a task message always fits gRPC's limit
    with pytest.raises(ConfigError, match="FEDTIER_MAX_ROUND_CONFIG_BYTES"):
        Settings.from_env({"FEDTIER_MAX_ROUND_CONFIG_BYTES": str(20 << 20)})
    configure(Limits(model_tensors=1))  # the process's bounds are what it was configured with
    try:
        with pytest.raises(ValueError, match="FEDTIER_MAX_MODEL_TENSORS"):
            helper.from_bytes(helper.to_bytes({"a": np.zeros(1), "b": np.zeros(1)}))
    finally:
        configure(None)


def test_connect_calls_with_ever_new_names_do_not_grow_the_registry() -> None:
    from fedtier.combiner.registry import ClientRegistry, CombinerFullError

    registry = ClientRegistry(10.0, max_streams=3)
    for i in range(100):
        registry.connect(f"name-{i}")
    assert len(registry.snapshot()) == 6 and "name-99" in {c.name for c in registry.snapshot()}  # 2 x max_streams
    for name in [c.name for c in registry.snapshot()]:
        try:
            registry.open_stream(name)
        except CombinerFullError:  # three streams at most
            pass
    assert sum(1 for c in registry.snapshot() if c.active) == 3
    registry.connect("another")  # displaces one of the three without a stream
    streaming = {c.name for c in registry.snapshot() if c.active}
    assert len(registry.snapshot()) == 6 and len(streaming) == 3
