"""Unit: the reducer's view of clients comes from each combiner's current status answer.

The same behaviour over real processes (a combiner killed and restarted on its port) is
tests/test_faults.py::test_combiner_restart_clients_inactive_until_back; this pins each rule."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import pytest

from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer import network as network_module
from fedtier.reducer.network import CLIENTS, COMBINERS, Network
from fedtier.storage.sqlite import SQLiteStateStore


class Down(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class Slow(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


class Handle:
    """Stands in for CombinerClient: answers with ``status``, or fails while it is None."""

    def __init__(self) -> None:
        self.answer: pb.CombinerStatus | None = None
        self.failure: type[grpc.RpcError] = Down

    def status(self, timeout: float = 5.0) -> pb.CombinerStatus:
        if self.answer is None:
            raise self.failure()
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


def test_the_live_view_stays_bounded_and_its_counts_match_its_list() -> None:
    """GET /api/v1/rounds/current at the lab's scale (1,000 clients on two combiners): counts per
    state add up to the total, at most 20 names of the waiting, one page of clients, and the
    counts of a filter are the length of what it lists; a combiner's final states, returned with
    its result, win over an older poll of the same round, and another round's states never show."""
    from fedtier.reducer.live import WAITING_SHOWN, current_round

    states = ["chosen", "downloading", "training", "uploading", "reported"]

    def progress(round_id: str, combiner: int, state_of) -> pb.RoundProgress:
        return pb.RoundProgress(round_id=round_id, kind=pb.TRAINING, elapsed_s=3.0, clients=[
            pb.ClientProgress(client_name=f"c{combiner}-{i:03d}", state=state_of(i), state_for_s=i / 100)
            for i in range(500)])

    doc = {"id": "r", "seq": 7, "round": 5, "session_id": "s", "started_at": 1000.0}
    live = {"a": (1009.0, progress("r", 0, lambda i: states[i % 5])),
            "b": (1009.0, progress("r", 1, lambda i: "training")),
            "stale": (1009.0, progress("an-older-round", 2, lambda i: "training"))}
    ended = {"b": (1009.5, progress("r", 1, lambda i: "reported" if i % 2 else "failed"))}
    view = current_round(doc, "monitoring", live, ended, offset=40, limit=25, now=1010.0)
    assert view["total"] == 1000 == sum(view["counts"].values())
    assert view["counts"]["reported"] == 100 + 250 and view["counts"]["failed"] == 250
    assert [c["name"] for c in view["combiners"]] == ["a", "b"] and view["combiners"][1]["finished"]
    assert view["waiting_total"] == 400 and len(view["waiting_for"]) == WAITING_SHOWN
    longest = view["waiting_for"][0]
    assert longest["client"] == "c0-498" and longest["state_for_s"] == pytest.approx(4.98 + 1.0)  # aged with the answer
    assert len(view["clients"]) == 25 and view["clients"][0]["client"] == "c0-040"
    for state in states:
        only = current_round(doc, "monitoring", live, ended, state=state, limit=200, now=1010.0)
        assert only["matching"] == view["counts"][state]
        assert {c["state"] for c in only["clients"]} == {state} and len(only["clients"]) == min(200, only["matching"])
    assert current_round(None, "idle", live, ended)["round"] is None


def test_a_slow_combiner_keeps_its_clients_until_it_goes_offline(view) -> None:
    """A combiner too busy to answer one poll in time still holds its clients' streams: the
    round counts none of them (no current answer), but the stored view is not rewritten
    (a thousand writes, and clients wrongly shown inactive) on every poll it misses."""
    network, handle, store = view
    handle.answer = answer("boot-1", "a", "b")
    network.refresh()
    handle.answer, handle.failure = None, Slow
    writes: list[str] = []
    update = store.update
    store.update = lambda collection, doc_id, fields: writes.append(doc_id) or update(collection, doc_id, fields)
    assert network.refresh() == {}  # a round counts nothing here
    assert active(store) == ["a", "b"] and store.get(COMBINERS, "c0")["online"]
    assert "a" not in writes and "b" not in writes
    network.offline_after_s = 0  # silent for longer than that: offline, and so are its clients
    assert network.refresh() == {}
    assert active(store) == [] and not store.get(COMBINERS, "c0")["online"]


def test_assign_balances_many_joins_without_counting_every_client_on_each(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting each combiner's clients on every /assign scanned all of them under the lock,
    so thousands joining at once took seconds each: the count is kept up between recounts."""
    store = SQLiteStateStore(tmp_path / "state.sqlite")
    network = Network(store, offline_after_s=60)
    for port, name in enumerate(("c0", "c1"), start=1):
        network.add_combiner(name, "127.0.0.1", port)
    counts: list[object] = []
    count = store.count
    monkeypatch.setattr(store, "count", lambda collection, where=None: counts.append(where) or count(collection,
                                                                                                      where=where))
    monkeypatch.setattr(network_module, "LOAD_RECOUNT_S", 3600.0, raising=False)
    homes = Counter(network.assign(f"client-{i}")["combiner"] for i in range(300))
    assert homes == {"c0": 150, "c1": 150}
    assert len(counts) == 2  # one recount, one query per combiner: not two per request
    before = store.get(CLIENTS, "client-7")["combiner"]
    assert network.assign("client-7")["combiner"] == before  # an assigned client stays put
    # a recount sees what the store records otherwise (clients that dialled c1 directly)
    for i in range(20):
        store.upsert(CLIENTS, f"direct-{i}", {"name": f"direct-{i}", "combiner": "c1"})
    monkeypatch.setattr(network_module, "LOAD_RECOUNT_S", 0.0)
    assert Counter(network.assign(f"late-{i}")["combiner"] for i in range(20)) == {"c0": 20}
    store.close()
