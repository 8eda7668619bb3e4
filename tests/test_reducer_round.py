"""One reducer round in-process, combiners faked: what the round hands the trail.

The combiners are stand-ins (no gRPC, no clients): each returns a model file as the
real CombinerClient.download_model does, with the sha256 verified on arrival. What is
under test is the reducer's side: which model it commits and how it commits it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedtier.storage.local as local_module
import fedtier.storage.model_store as model_store_module
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.control import LATEST, Control
from fedtier.reducer.trail import ModelTrail
from fedtier.round_config import RoundConfig
from fedtier.storage.local import LocalModelStore
from fedtier.storage.sqlite import SQLiteStateStore
from fedtier.transport.streams import Received, xxh3_file

helper = get_helper("numpy")


def model_file(path: Path, value: float) -> Path:
    helper.save({"w": np.full((64, 64), value, np.float32)}, path)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeCombiner:
    """Trains nothing: its round result is a prepared model of ``examples`` examples."""

    def __init__(self, name: str, model: Path, examples: int,
                 updates: list[tuple[str, int, int]] | None = None) -> None:
        self.name, self.model, self.examples = name, model, examples
        # (client, reported, weight used by the combiner); default: one client, all of it, weight not stated
        self.updates = updates if updates is not None else [(f"{name}-client", examples, 0)]
        self.requests: list[pb.RoundRequest] = []
        self.fetched_durably: list[bool] = []
        self.pushed: list[tuple[str, str | None, str | None]] = []  # (model id, sha256, xxh3) sent with

    def adopt_model(self, path: Path, model_id: str, sha256: str, timeout: float | None = None) -> bool:
        return False  # holds nothing: every push is an upload

    def upload_model(self, path: Path, model_id: str, timeout: float | None = None,
                     sha256: str | None = None, xxh3: str | None = None) -> pb.UploadResponse:
        self.pushed.append((model_id, sha256, xxh3))
        return pb.UploadResponse(model_id=model_id)

    def start_round(self, request: pb.RoundRequest, timeout: float | None = None) -> pb.RoundResult:
        self.requests.append(request)
        return pb.RoundResult(round_id=request.round_id, success=True, model_id=f"{self.name}-model",
                              num_examples=self.examples,
                              updates=[pb.ClientContribution(client_name=client, num_examples=reported,
                                                             weight_used=used, capped=0 < used < reported)
                                       for client, reported, used in self.updates])

    def download_model(self, model_id: str, dest: Path, timeout: float | None = None,
                       durable: bool = False, inspect: Any = None) -> Received:
        """As receive_to_file does: the bytes pass ``inspect`` in chunks on their way to ``dest``."""
        self.fetched_durably.append(durable)
        shutil.copyfile(self.model, dest)
        size = dest.stat().st_size
        header = pb.TransferHeader(model_id=model_id, size=size)
        inspector = inspect(header) if inspect is not None else None
        if inspector is not None:
            data = dest.read_bytes()
            for start in range(0, size, 4096):
                inspector.feed(memoryview(data)[start:start + 4096])
        # as a combiner sends its aggregate: content hash and checksum computed on the way out
        return Received(path=dest, header=header, size=size, sha256=sha256_of(dest), xxh3=xxh3_file(dest),
                        inspector=inspector)


class FakeNetwork:
    def __init__(self, combiners: list[FakeCombiner]) -> None:
        self.combiners = {c.name: c for c in combiners}

    def refresh(self) -> dict[str, int]:  # each combiner answers, with one active client
        return {name: 1 for name in self.combiners}

    def online_combiners(self) -> list[dict[str, Any]]:
        return [{"name": name, "active_clients": 1} for name in self.combiners]

    def handle(self, name: str) -> FakeCombiner:
        return self.combiners[name]


class HashSpy:
    """Stands in for hashlib in the store's modules: counts the sha256 objects made."""

    def __init__(self) -> None:
        self.made = 0

    def sha256(self, *args: Any) -> Any:
        self.made += 1
        return hashlib.sha256(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(hashlib, name)


class PutSpy:
    """Wraps store.put_file: records each call's keyword arguments and how many sha256
    objects the store made during it (reads elsewhere in the round, which verify, are
    not counted)."""

    def __init__(self, store: LocalModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[dict[str, Any], int]] = []
        real = store.put_file

        def put_file(model_id: str, path: Path, **kwargs: Any) -> Any:
            spy = HashSpy()
            with monkeypatch.context() as patch:
                for module in (local_module, model_store_module):
                    patch.setattr(module, "hashlib", spy)
                stored = real(model_id, path, **kwargs)
            self.calls.append((kwargs, spy.made))
            return stored

        monkeypatch.setattr(store, "put_file", put_file)


@pytest.fixture
def reducer(tmp_path: Path):
    store = LocalModelStore(tmp_path / "model_store")
    state = SQLiteStateStore(tmp_path / "state.sqlite")
    trail = ModelTrail(store, state)
    seed = trail.commit(model_file(tmp_path / "seed", 0.0), parent_id=None, kind="seed")
    yield store, trail, seed, tmp_path
    state.close()


def run_round(trail: ModelTrail, work_dir: Path, combiners: list[FakeCombiner],
              monkeypatch: pytest.MonkeyPatch, **config: Any) -> tuple[dict[str, Any], PutSpy]:
    spy = PutSpy(trail.models, monkeypatch)  # type: ignore[arg-type]
    control = Control(trail.state, trail, FakeNetwork(combiners), work_dir)  # type: ignore[arg-type]
    round_doc = control._run_round("session-1", RoundConfig(validate=False, wait_for_clients=1.0, **config))
    assert round_doc["status"] == "success", round_doc["error"]
    return round_doc, spy


def test_one_combiner_round_commits_its_model_with_the_hash_verified_on_arrival(reducer, monkeypatch):
    store, trail, seed, tmp_path = reducer
    combiner_model = model_file(tmp_path / "combiner-model", 1.5)
    work_dir = tmp_path / "work"

    combiner = FakeCombiner("c1", combiner_model, 10)
    round_doc, spy = run_round(trail, work_dir, [combiner], monkeypatch)
    assert combiner.fetched_durably == [True]  # its file is the trail's: on disk during the fetch

    record = trail.get(round_doc["model_out"])
    assert record["sha256"] == sha256_of(combiner_model) and record["xxh3"] == xxh3_file(combiner_model)
    assert record["parent_id"] == seed["id"]
    ((kwargs, hashed),) = spy.calls
    assert kwargs == {"sha256": record["sha256"], "link": True}
    assert hashed == 0, "the store hashed a model whose sha256 the reducer already knew"
    # taken by link, and the kept copy for the next round is that same file
    kept = work_dir / LATEST / record["id"]
    assert os.path.samefile(kept, store.root / "models" / record["id"] / "data")
    trail.fetch(record["id"], tmp_path / "read-back")  # verified against the recorded hash
    assert (tmp_path / "read-back").read_bytes() == combiner_model.read_bytes()


def test_the_next_round_pushes_the_kept_model_with_the_checksum_it_arrived_with(reducer, monkeypatch):
    """The kept copy is not read to be hashed again: the trail's checksum goes with it, so a
    copy damaged on the reducer's disk would be refused by the combiner."""
    _, trail, seed, tmp_path = reducer
    combiner = FakeCombiner("c1", model_file(tmp_path / "combiner-model", 1.5), 10)
    first, _ = run_round(trail, tmp_path / "work", [combiner], monkeypatch)
    second, _ = run_round(trail, tmp_path / "work", [combiner], monkeypatch)
    record = trail.get(first["model_out"])
    # the seed went into the store from a file: no checksum recorded, computed on the way
    assert combiner.pushed == [(seed["id"], seed["sha256"], None),
                               (record["id"], record["sha256"], record["xxh3"])]
    assert second["status"] == "success"


def test_several_combiners_round_has_the_store_hash_the_average(reducer, monkeypatch):
    _, trail, _, tmp_path = reducer
    combiners = [FakeCombiner("c1", model_file(tmp_path / "m1", 1.0), 1),
                 FakeCombiner("c2", model_file(tmp_path / "m2", 4.0), 2)]
    work_dir = tmp_path / "work"

    round_doc, spy = run_round(trail, work_dir, combiners, monkeypatch)
    assert [c.fetched_durably for c in combiners] == [[False], [False]]  # scratch: averaged, then deleted

    record = trail.get(round_doc["model_out"])
    ((kwargs, hashed),) = spy.calls
    assert kwargs == {"sha256": None, "link": True}
    assert hashed == 1  # no known hash for FedAvg's output: the store computed it
    kept = work_dir / LATEST / record["id"]
    assert record["sha256"] == sha256_of(kept)
    np.testing.assert_allclose(helper.load(kept)["w"], 3.0)
    trail.fetch(record["id"], tmp_path / "read-back")


def test_each_combiner_counts_with_what_its_clients_delivered_under_the_cap(reducer, monkeypatch, caplog):
    """A liar alone on its combiner (whose own cap, over one client, cannot catch it) and a
    combiner claiming more than its clients delivered are both held down at the reducer."""
    _, trail, _, tmp_path = reducer
    combiners = [FakeCombiner("c1", model_file(tmp_path / "m1", 1.0), 30, [("a", 10, 10), ("b", 20, 20)]),
                 FakeCombiner("c2", model_file(tmp_path / "m2", 100.0), 10**12, [("liar", 10**12, 10**12)]),
                 FakeCombiner("c3", model_file(tmp_path / "m3", 4.0), 1000, [("d", 15, 15)])]
    with caplog.at_level("WARNING", logger="fedtier.reducer.control"):
        round_doc, _ = run_round(trail, tmp_path / "work", combiners, monkeypatch,
                                 weight_cap_median=10, weight_cap=10**6)
    # reported [10, 15, 20, 1e12]: lower median 15, cap 150
    kept = tmp_path / "work" / LATEST / round_doc["model_out"]
    np.testing.assert_allclose(helper.load(kept)["w"], (30 * 1.0 + 150 * 100.0 + 15 * 4.0) / 195, rtol=1e-6)
    stored = trail.state.get("rounds", round_doc["id"])
    assert stored["capped"] == [{"client": "liar", "combiner": "c2", "reported": 10**12, "used": 150}]
    assert stored["capped_combiners"] == [{"combiner": "c2", "reported": 10**12, "used": 150},
                                          {"combiner": "c3", "reported": 1000, "used": 15}]
    assert "client liar (combiner c2) reported 1000000000000 examples; counted as 150" in caplog.text
    assert "combiner c3 claimed 1000 examples; counted as 15" in caplog.text
    # the weight settings reach each combiner as given, whatever else the reducer rewrites
    for combiner in combiners:
        sent = json.loads(combiner.requests[0].config_json)
        assert (sent["weight_cap_median"], sent["weight_cap"]) == (10, 10**6)


def test_nobody_capped_is_two_tier_fedavg_exactly(reducer, monkeypatch):
    _, trail, _, tmp_path = reducer
    combiners = [FakeCombiner("c1", model_file(tmp_path / "m1", 1.0), 30, [("a", 10, 10), ("b", 20, 20)]),
                 FakeCombiner("c2", model_file(tmp_path / "m2", 7.0), 40, [("c", 40, 40)])]
    round_doc, _ = run_round(trail, tmp_path / "work", combiners, monkeypatch)
    kept = tmp_path / "work" / LATEST / round_doc["model_out"]
    np.testing.assert_allclose(helper.load(kept)["w"], (30 * 1.0 + 40 * 7.0) / 70, rtol=1e-6)
    assert round_doc["capped"] == [] and round_doc["capped_combiners"] == []


@pytest.mark.parametrize("count", [1, 2])
def test_combiner_models_are_checked_as_they_arrive_not_read_again(reducer, monkeypatch, count):
    """The reducer feeds each combiner model to its aggregator's check on the way in, so
    neither aggregate_one nor add reads the file to check it."""
    import fedtier.aggregators.base as fedavg_module

    _, trail, _, tmp_path = reducer
    file_checks: list[Any] = []
    monkeypatch.setattr(fedavg_module, "check_file", lambda *args: file_checks.append(args))
    combiners = [FakeCombiner(f"c{i}", model_file(tmp_path / f"m{i}", 2.0 * (i + 1)), 1) for i in range(count)]
    round_doc, _ = run_round(trail, tmp_path / "work", combiners, monkeypatch)
    assert file_checks == []
    kept = tmp_path / "work" / LATEST / round_doc["model_out"]
    np.testing.assert_allclose(helper.load(kept)["w"], 2.0 if count == 1 else 3.0)


@pytest.mark.parametrize("count", [1, 2])
def test_a_combiner_model_refused_on_arrival_leaves_the_trail_as_it_was(reducer, count):
    _, trail, seed, tmp_path = reducer
    bad = np.full((64, 64), 1.0, np.float32)
    bad[63, 63] = np.nan
    helper.save({"w": bad}, tmp_path / "bad")
    combiners = [FakeCombiner("c0", tmp_path / "bad", 1)]
    combiners += [FakeCombiner(f"c{i}", model_file(tmp_path / f"m{i}", 1.0), 1) for i in range(1, count)]
    control = Control(trail.state, trail, FakeNetwork(combiners), tmp_path / "work")  # type: ignore[arg-type]
    round_doc = control._run_round("session-1", RoundConfig(validate=False, wait_for_clients=1.0))
    assert round_doc["status"] == "failed" and "1 NaN and 0 inf values (first at element 4095)" in round_doc["error"]
    assert [m["id"] for m in trail.all()] == [seed["id"]]


def test_a_seed_is_copied_so_the_callers_file_stays_its_own(reducer):
    """Only round scratch is handed to the store by link; a seed file the operator owns is
    copied, and stays writable and separate from the trail's model."""
    store, trail, seed, tmp_path = reducer
    source = tmp_path / "seed"
    assert os.access(source, os.W_OK)
    assert not os.path.samefile(source, store.root / "models" / seed["id"] / "data")
