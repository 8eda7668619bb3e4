"""Issue 14: data served must be data stored; store failures are named; one reducer per data directory.

Real reducer processes where the network is the point (what an HTTP client sees of a damaged
model, a second reducer started on a live one's directory, a full filesystem under the store);
the app in-process for the error answers, and the round with fake combiners
(tests/test_reducer_round.py) for what a round records.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

import fedtier.storage.local as local_module
from conftest import ProcessGroup, free_port, wait_for_port
from fedtier.config import Settings
from fedtier.helpers import get_helper
from fedtier.reducer.app import build_reducer, create_app
from fedtier.reducer.control import Control
from fedtier.reducer.downloads import repr_digest
from fedtier.round_config import RoundConfig
from fedtier.storage.dirlock import DataDirInUse
from fedtier.storage.sqlite import SQLiteStateStore
from fedtier.storage.state_store import StateStoreFullError
from test_reducer_round import FakeCombiner, FakeNetwork, model_file

helper = get_helper("numpy")
MiB = 1 << 20


def seed_bytes(mib: float) -> bytes:
    return helper.to_bytes({"w": np.arange(int(mib * MiB) // 4, dtype=np.float32)})


def flip_byte(data_file: Path, offset: int) -> None:
    """Damage at rest as a bad sector or a stray write would: same size, one byte changed."""
    os.chmod(data_file, 0o644)
    with open(data_file, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


# ---------------------------------------------------------------- real processes
def test_damaged_model_is_never_a_complete_download_and_a_second_reducer_refuses_the_directory(
        procs: ProcessGroup, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    env = {"FEDTIER_DATA_DIR": str(data_dir)}
    first = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port), env=env)
    wait_for_port(port, proc=first)

    # a second reducer on the same directory exits at once, naming the directory and the holder
    second = procs.start("reducer2", "reducer", "--host", "127.0.0.1", "--port", str(free_port()), env=env)
    assert second.wait(30) != 0
    log = procs.log("reducer2")
    assert f"data directory {data_dir.resolve()} is in use by another reducer (pid {first.pid} " in log, log
    assert not (data_dir / "reducer" / "latest").exists()  # it opened nothing (the first made no round yet)

    seed = seed_bytes(3)
    reply = requests.post(f"{url}/seed", files={"seed": ("seed", io.BytesIO(seed))})
    assert reply.status_code == 201, reply.text  # the first one is still serving
    model = reply.json()["model"]
    download = requests.get(f"{url}/api/v1/models/{model['id']}/download")
    assert download.status_code == 200 and download.content == seed
    assert download.headers["X-Model-SHA256"] == model["sha256"]
    assert download.headers["Repr-Digest"] == repr_digest(model["sha256"])

    flip_byte(data_dir / "model_store" / "models" / model["id"] / "data", len(seed) // 2)

    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # urllib3: IncompleteRead
        with requests.get(f"{url}/api/v1/models/{model['id']}/download", stream=True, timeout=30) as response:
            assert response.status_code == 200  # streaming had begun: the failure is the short body
            for chunk in response.iter_content(64 * 1024):
                received += chunk
    assert len(received) < len(seed)
    # curl says so too: exit 18, "transfer closed with N bytes remaining to read"
    if shutil.which("curl"):
        curl = subprocess.run(["curl", "-sS", "-o", os.devnull, f"{url}/api/v1/models/{model['id']}/download"],
                              capture_output=True, text=True, timeout=30)
        assert curl.returncode == 18, curl.stderr
    log = procs.log("reducer")
    assert f"model {model['id']} is damaged in the model store: download aborted after" in log, log[-3000:]
    assert requests.get(f"{url}/api/v1/status").json()["state"] == "idle"  # and it keeps serving


@pytest.fixture
def tiny_store_fs(tmp_path: Path):
    """The model store's directory on its own 1 MiB filesystem: a real ENOSPC from the kernel
    for the store alone, while uploads spooled elsewhere under the data directory still fit."""
    mount_point = tmp_path / "data" / "model_store"
    mount_point.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_under_the_model_store_is_named_and_nothing_is_half_written(
        procs: ProcessGroup, tmp_path: Path, tiny_store_fs: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    reducer = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port),
                          env={"FEDTIER_DATA_DIR": str(tmp_path / "data"), "FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": ""})
    wait_for_port(port, proc=reducer)

    reply = requests.post(f"{url}/seed", files={"seed": ("seed", io.BytesIO(seed_bytes(2)))})

    assert reply.status_code == 507, reply.text
    error = reply.json()["error"]
    assert error.startswith(f"model store: no space left on device under {tiny_store_fs} (writing model "), error
    assert requests.get(f"{url}/api/v1/models").json() == []
    assert requests.get(f"{url}/api/v1/status").json()["state"] == "setup"
    assert os.listdir(tiny_store_fs / "models") == [] and os.listdir(tiny_store_fs / "tmp") == []
    # a seed that fits is taken: the failure left nothing that stands in the way
    small = seed_bytes(0.25)
    assert requests.post(f"{url}/seed", files={"seed": ("seed", io.BytesIO(small))}).status_code == 201
    assert "Traceback" not in procs.log("reducer")


# ---------------------------------------------------------------- in process
@pytest.fixture
def app(tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    yield app
    app.extensions["fedtier"].close()


def seeded(app: Any, mib: float) -> tuple[dict[str, Any], Path]:
    reply = app.test_client().post("/seed", data={"seed": (io.BytesIO(seed_bytes(mib)), "seed")})
    assert reply.status_code == 201, reply.get_json()
    model = reply.get_json()["model"]
    return model, app.extensions["fedtier"].settings.data_dir / "model_store" / "models" / model["id"] / "data"


@pytest.mark.parametrize("damage", ["flipped", "truncated", "meta"])
def test_damage_known_before_the_first_byte_is_a_json_error_not_a_download(app, damage: str) -> None:
    """A small model (verified whole before anything is sent), a file shorter than recorded, a
    store record that disagrees with the trail's: a 500 naming the model, no body of model bytes."""
    model, data_file = seeded(app, 0.5)
    if damage == "flipped":
        flip_byte(data_file, 100)
    elif damage == "truncated":
        os.chmod(data_file, 0o644)
        os.truncate(data_file, model["size"] - 1)
    else:  # the store's own record replaced: data and metadata consistent, but not the trail's model
        meta = data_file.with_name("meta.json")
        os.chmod(meta, 0o644)
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "sha256": "0" * 64}))
    reply = app.test_client().get(f"/api/v1/models/{model['id']}/download")
    error = reply.get_json()["error"]
    assert reply.status_code == 500 and error.startswith("model store: model ") and model["id"] in error, error
    assert ("damaged" if damage == "meta" else "corrupt") in error


def test_a_damaged_compute_package_is_not_served(app, tmp_path: Path) -> None:
    from fedtier.package import pack

    project = Path(__file__).parent / "projects" / "numpy_shift"
    client = app.test_client()
    assert client.post("/package", data={"package": (io.BytesIO(pack(project)), "p.tgz")}).status_code == 201
    record = client.get("/api/v1/package").get_json()
    good = client.get("/api/v1/package/download")
    assert good.status_code == 200 and good.headers["Repr-Digest"] == repr_digest(record["sha256"])
    flip_byte(tmp_path / "model_store" / "models" / f"package-{record['sha256'][:40]}" / "data", 10)
    reply = client.get("/api/v1/package/download")
    assert reply.status_code == 500 and "corrupt" in reply.get_json()["error"], reply.get_data()[:200]


def test_a_seed_the_store_has_no_room_for_is_507_and_changes_nothing(app, tmp_path: Path, monkeypatch) -> None:
    def no_room(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_module, "copy_hashing", no_room)
    reply = app.test_client().post("/seed", data={"seed": (io.BytesIO(seed_bytes(0.1)), "seed")})
    assert reply.status_code == 507
    assert reply.get_json()["error"].startswith(f"model store: no space left on device under {tmp_path / 'model_store'}")
    assert app.test_client().get("/api/v1/models").get_json() == []
    assert os.listdir(tmp_path / "model_store" / "tmp") == [] and os.listdir(tmp_path / "model_store" / "models") == []


def test_a_round_whose_commit_finds_the_disk_full_says_so(tmp_path: Path, monkeypatch) -> None:
    """The round record names the model store, not "internal error: [Errno 28]"; the trail is
    as it was and the store holds nothing of the round's model."""
    reducer = build_reducer(Settings(data_dir=tmp_path))
    try:
        seed = reducer.trail.commit(model_file(tmp_path / "seed", 0.0), parent_id=None, kind="seed")

        def no_room(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(local_module.os, "link", no_room)  # the commit's link: a full directory
        monkeypatch.setattr(local_module.shutil, "copyfileobj", no_room)  # and the copy it falls back to
        control = Control(reducer.state, reducer.trail, FakeNetwork([FakeCombiner("c0", model_file(
            tmp_path / "combiner-model", 1.0), 10)]), reducer.work_dir)  # type: ignore[arg-type]
        round_doc = control._run_round("session-1", RoundConfig(validate=False, wait_for_clients=1.0))
        assert round_doc["status"] == "failed"
        assert round_doc["error"].startswith(
            f"model store: no space left on device under {tmp_path / 'model_store'} (writing model "), round_doc
        assert [m["id"] for m in reducer.trail.all()] == [seed["id"]]
        assert reducer.models.list_ids() == [seed["id"]]
        assert os.listdir(tmp_path / "model_store" / "tmp") == []
    finally:
        reducer.close()


def test_sqlite_full_is_named_and_the_store_recovers(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "state.sqlite")
    try:
        store.insert("rounds", {"id": "r0"})
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[union-attr]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[union-attr]
        with pytest.raises(StateStoreFullError, match=f"insert into collection 'rounds' failed in SQLite state "
                                                      f"store {tmp_path / 'state.sqlite'}: database or disk is full"):
            store.insert("rounds", {"id": "r1", "blob": "x" * 200_000})
        assert store.get("rounds", "r1") is None
        store._conn.execute("PRAGMA max_page_count = 1073741823")  # type: ignore[union-attr]
        store.insert("rounds", {"id": "r1"})  # no transaction was left open by the failure
        assert [d["id"] for d in store.find("rounds")] == ["r0", "r1"]
    finally:
        store.close()


def test_a_full_state_store_answers_507_naming_it(app, monkeypatch) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise StateStoreFullError("insert into collection 'packages' failed in SQLite state store x: "
                                  "database or disk is full")

    from fedtier.package import pack

    monkeypatch.setattr(app.extensions["fedtier"].state, "insert", full)
    data = pack(Path(__file__).parent / "projects" / "numpy_shift")
    reply = app.test_client().post("/package", data={"package": (io.BytesIO(data), "p.tgz")})
    assert reply.status_code == 507 and reply.get_json()["error"].startswith("state store: insert into"), \
        reply.get_json()


def test_one_reducer_per_data_directory_in_process_until_closed(tmp_path: Path) -> None:
    first = build_reducer(Settings(data_dir=tmp_path))
    try:
        with pytest.raises(DataDirInUse, match=f"data directory {tmp_path} is in use by another reducer "
                                                f"\\(pid {os.getpid()} on host "):
            build_reducer(Settings(data_dir=tmp_path))
        other = build_reducer(Settings(data_dir=tmp_path / "elsewhere"))  # another directory: fine
        other.close()
    finally:
        first.close()
    build_reducer(Settings(data_dir=tmp_path)).close()  # released on close
