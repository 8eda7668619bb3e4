"""Unit: the reducer's view of clients comes from each combiner's current status answer.

The same behaviour over real processes (a combiner killed and restarted on its port) is
tests/test_faults.py::test_combiner_restart_clients_inactive_until_back; this pins each rule."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.network import CLIENTS, COMBINERS, Network
from fedtier.storage.sqlite import SQLiteStateStore


class Down(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class Handle:
    """Stands in for CombinerClient: answers with ``status``, or fails while it is None."""

    def __init__(self) -> None:
        self.answer: pb.CombinerStatus | None = None

    def status(self, timeout: float = 5.0) -> pb.CombinerStatus:
        if self.answer is None:
            raise Down()
        return self.answer


def answer(instance: str, *active: str) -> pb.CombinerStatus:
    return pb.CombinerStatus(name="c0", instance_id=instance, active_clients=len(active),
                             clients=[pb.ClientInfo(name=n, active=True) for n in active])


@pytest.fixture
def view(tmp_path: Path):
    store = SQLiteStateStore(tmp_path / "state.sqlite")
    network = Network(store, offline_after_s=60)
    network.add_combiner("c0", "127.0.0.1", 1)
    handle = Handle()
    network._handles["c0"] = handle  # type: ignore[assignment]
    yield network, handle, store
    store.close()


def active(store: SQLiteStateStore) -> list[str]:
    return sorted(c["name"] for c in store.find(CLIENTS, where={"active": True}))


def test_a_silent_combiner_has_no_active_clients_at_once_but_stays_online(view) -> None:
    network, handle, store = view
    handle.answer = answer("boot-1", "a", "b")
    assert network.refresh() == {"c0": 2} and active(store) == ["a", "b"]
    handle.answer = None
    assert network.refresh() == {}  # a round counts nothing here
    assert active(store) == [] and store.get(COMBINERS, "c0")["active_clients"] == 0
    assert store.get(COMBINERS, "c0")["online"]  # /assign keeps its clients there for offline_after_s


def test_a_restarted_combiner_keeps_only_the_clients_it_lists(view) -> None:
    network, handle, store = view
    handle.answer = answer("boot-1", "a", "b")
    network.refresh()
    handle.answer = answer("boot-2", "b")  # came back between two polls; only b reconnected yet
    assert network.refresh() == {"c0": 1}
    assert active(store) == ["b"] and store.get(COMBINERS, "c0")["instance_id"] == "boot-2"
