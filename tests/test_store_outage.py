"""The object store goes away: brief outages are ridden out, long ones fail clearly, the trail stays whole."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from conftest import free_port
from fedtier.helpers import get_helper
from fedtier.reducer.trail import ModelTrail
from fedtier.storage.model_store import StorageUnavailableError
from fedtier.storage.s3 import S3ModelStore
from fedtier.storage.sqlite import SQLiteStateStore

helper = get_helper("numpy")


class Moto:
    """moto's S3 on a fixed port, so it can be stopped and brought back at the same address."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def moto(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = Moto()
    server.start()
    yield server
    server.stop()


def model_file(tmp_path: Path, value: float) -> Path:
    path = tmp_path / f"model-{value}"
    helper.save({"w": np.full((64, 64), value, np.float32)}, path)
    return path


def test_outages_are_retried_or_fail_clearly_and_the_trail_stays_whole(moto: Moto, tmp_path: Path) -> None:
    store = S3ModelStore(f"127.0.0.1:{moto.port}", "testing", "testing", "trail-bucket", region="us-east-1",
                         retries=4, backoff_s=0.3, connect_timeout_s=2, read_timeout_s=10)
    trail = ModelTrail(store, SQLiteStateStore(tmp_path / "state.sqlite"))
    seed = trail.commit(model_file(tmp_path, 0.0), parent_id=None, kind="seed")

    # a few seconds without the store: the write is retried with backoff and lands
    moto.stop()
    threading.Timer(1.5, moto.start).start()
    started = time.monotonic()
    first = trail.commit(model_file(tmp_path, 1.0), parent_id=seed["id"], round_number=1)
    assert time.monotonic() - started >= 1.0  # it really waited for the store to come back
    assert [m["id"] for m in trail.all()] == [seed["id"], first["id"]]

    # a long outage: bounded retries, then a clear error naming the endpoint; nothing committed
    moto.stop()
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=f"127.0.0.1:{moto.port}"):
        trail.commit(model_file(tmp_path, 2.0), parent_id=first["id"], round_number=2)
    assert time.monotonic() - started < 60
    with pytest.raises(StorageUnavailableError):
        trail.fetch(first["id"], tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()
    assert [m["id"] for m in trail.all()] == [seed["id"], first["id"]]  # no record without bytes

    # the store returns: every committed model reads back with its hash checked
    moto.start()
    assert helper.load(trail.fetch(first["id"], tmp_path / "fetched"))["w"][0, 0] == 1.0
    assert sorted(store.list_ids()) == sorted([seed["id"], first["id"]])
