"""Reports that do not answer an open task of the round are rejected and change nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fedtier.aggregators.base as fedavg_module
from fedtier.aggregators import FedAvg, Update
from fedtier.combiner.model_cache import ModelCache, UploadRefused
from fedtier.combiner.registry import ClientRegistry
from fedtier.combiner.round import ActiveRound, RejectedReport
from fedtier.combiner.runner import RoundRunner
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from fedtier.transport.streams import TransferError, file_chunks, xxh3_file

helper = get_helper("numpy")


@pytest.fixture
def setup(tmp_path: Path):
    cache = ModelCache(tmp_path / "cache")
    global_model = tmp_path / "global"
    helper.save({"w": np.zeros(4, np.float32)}, global_model)
    round_ = ActiveRound(round_id="r1", kind=pb.TRAINING, model_id="global", aggregator=FedAvg(helper))
    round_.aggregator.start(global_model)
    round_.expect("t-a", "alice")
    round_.expect("t-b", "bob")
    return tmp_path, cache, round_


def upload(tmp_path: Path, cache: ModelCache, client: str, value: float, dtype=np.float32, shape=(4,)) -> str:
    path = tmp_path / f"{client}-{value}"
    helper.save({"w": np.full(shape, value, dtype=dtype)}, path)
    return cache.receive(file_chunks(path, client_name=client), lambda header: None).path.name  # admitted


def update(client: str, task: str, model_id: str, round_id: str = "r1", examples: int = 10,
           parent: str = "global") -> pb.ModelUpdate:
    return pb.ModelUpdate(client_name=client, task_id=task, round_id=round_id, model_id=model_id,
                          parent_model_id=parent, num_examples=examples)


def test_forged_and_misdirected_reports_are_rejected(setup) -> None:
    tmp_path, cache, round_ = setup
    forged = upload(tmp_path, cache, "alice", 1.0)
    with pytest.raises(RejectedReport, match="report for round 'r0'"):  # a forged round id
        round_.submit_update(update("alice", "t-a", forged, round_id="r0"), cache)
    assert not cache.exists(forged)  # the upload behind a rejected report is not kept
    for report, message in [(update("alice", "t-x", upload(tmp_path, cache, "alice", 1.0)), "unknown task"),
                            (update("mallory", "t-a", upload(tmp_path, cache, "mallory", 5.0)),
                             "was sent to alice, not mallory")]:
        with pytest.raises(RejectedReport, match=message):
            round_.submit_update(report, cache)
    assert round_.aggregator.num_updates == 0 and not round_.answered  # nothing was claimed

    round_.submit_update(update("alice", "t-a", upload(tmp_path, cache, "alice", 1.0)), cache)
    with pytest.raises(RejectedReport, match="already answered"):  # a replay
        round_.submit_update(update("alice", "t-a", upload(tmp_path, cache, "alice", 9.0)), cache)
    # bob names a model alice uploaded: rejected, bob's task fails, alice's file is not touched
    alices = upload(tmp_path, cache, "alice", 7.0)
    with pytest.raises(RejectedReport, match="was not uploaded by bob"):
        round_.submit_update(update("bob", "t-b", alices), cache)
    assert cache.exists(alices)
    assert [u.client_name for u in round_.updates] == ["alice"]
    assert any(f.startswith("bob: update rejected") for f in round_.failures)
    round_.close()
    round_.settle(cache)  # alice's update waited for the cap (bob's weight might have lowered it)
    assert round_.aggregator.num_updates == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": np.float64}, "dtype"),
    ({"shape": (5,)}, "shape"),
    ({"value": np.inf}, "inf"),
    ({"value": np.nan}, "NaN"),
])
def test_incompatible_updates_are_rejected_with_the_reason(setup, kwargs, message) -> None:
    tmp_path, cache, round_ = setup
    value = kwargs.pop("value", 2.0)
    model_id = upload(tmp_path, cache, "bob", value, **kwargs)
    with pytest.raises(RejectedReport, match=message):
        round_.submit_update(update("bob", "t-b", model_id), cache)
    assert round_.aggregator.num_updates == 0
    assert any(f.startswith("bob: update rejected") for f in round_.failures)
    assert not cache.exists(model_id)


def test_updates_of_a_running_round_are_checked_as_they_arrive(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload path checks a round's updates on arrival (RoundRunner.arrival_check), so
    folding reads each file once, and a bad update is refused on what its upload showed."""
    tmp_path, cache, round_ = setup
    runner = RoundRunner("c1", ClientRegistry(10.0), cache)
    runner._current = round_  # what run() sets while the round's tasks are out
    file_checks: list[object] = []
    monkeypatch.setattr(fedavg_module, "check_file", lambda *args: file_checks.append(args))

    def arrive(client: str, value: float) -> str:
        path = tmp_path / f"{client}-{value}"
        helper.save({"w": np.full(4, value, np.float32)}, path)
        return cache.receive(file_chunks(path, client_name=client, chunk_size=5), runner.arrival_check).path.name

    alices, bobs = arrive("alice", 3.0), arrive("bob", np.nan)
    with pytest.raises(UploadRefused, match="'mallory' holds no open training task"):
        arrive("mallory", 1.0)
    assert cache.update_check(alices).error is None and "NaN" in str(cache.update_check(bobs).error)
    round_.submit_update(update("alice", "t-a", alices), cache)
    with pytest.raises(RejectedReport, match=r"'w' contains 4 NaN and 0 inf values"):
        round_.submit_update(update("bob", "t-b", bobs), cache)
    round_.close()
    round_.settle(cache)
    assert file_checks == []  # neither update was read to be checked
    assert round_.aggregator.num_updates == 1 and not cache.exists(bobs) and not cache.exists(alices)
    round_.aggregator.finish(tmp_path / "out")
    np.testing.assert_array_equal(helper.load(tmp_path / "out")["w"], np.full(4, 3.0, np.float32))
    runner._current = None
    with pytest.raises(UploadRefused, match="no training round is running"):  # between rounds
        arrive("alice", 4.0)


def test_reports_after_close_and_nonpositive_examples(setup) -> None:
    tmp_path, cache, round_ = setup
    with pytest.raises(RejectedReport, match="num_examples must be positive"):
        round_.submit_update(update("alice", "t-a", upload(tmp_path, cache, "alice", 1.0), examples=0), cache)
    round_.close()
    with pytest.raises(RejectedReport, match="closed"):
        round_.submit_update(update("bob", "t-b", upload(tmp_path, cache, "bob", 1.0)), cache)


def test_truncated_upload_leaves_nothing_to_report(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    path = tmp_path / "m"
    helper.save({"w": np.ones(100_000, np.float32)}, path)
    chunks = list(file_chunks(path, model_id="trunc", client_name="bob", chunk_size=64 << 10))
    with pytest.raises(TransferError):
        cache.receive(iter(chunks[:3]))
    assert not cache.exists("trunc") and cache.uploader("trunc") is None
    assert [p.name for p in cache.root.iterdir()] == []


def test_combiner_cache_keeps_only_models_in_use(tmp_path: Path) -> None:
    """Round after round, the combiner's disk holds the current models, not the history."""
    from fedtier.combiner.registry import ClientRegistry
    from fedtier.combiner.runner import RoundRunner

    cache = ModelCache(tmp_path / "cache")
    runner = RoundRunner("c", ClientRegistry(), cache)
    for i in range(5):
        path = tmp_path / f"g{i}"
        helper.save({"w": np.full(4, float(i), np.float32)}, path)
        cache.receive(file_chunks(path, model_id=f"global-{i}", client_name="reducer"))
        # no client is connected: the round fails after its short wait, and still prunes
        result = runner.run(pb.RoundRequest(round_id=f"r{i}", kind=pb.VALIDATION, model_id=f"global-{i}",
                                            config_json='{"wait_for_clients": 0.05}'))
        assert not result.success and "required clients" in result.error
    assert sorted(p.name for p in cache.root.iterdir()) == ["global-4"]


def test_round_ends_only_after_every_claimed_update_is_folded() -> None:
    """Ten updates arrive at once and each fold is slow: wait()/close() must not return while
    any of them is still queued, or the round would report fewer updates than it accepted."""
    import threading
    import time

    class SlowAggregator:
        def __init__(self) -> None:
            self.folded = 0

        def add(self, update: object) -> None:
            time.sleep(0.02)
            self.folded += 1

        def check(self, update: object) -> None:
            pass

    class Cache:
        def uploader(self, model_id: str) -> str:
            return model_id.split(":")[0]

        def path(self, model_id: str) -> Path:
            return Path("/dev/null")

        def update_check(self, model_id: str) -> None:
            return None

        def discard(self, model_id: str) -> None:
            pass

    for trial in range(5):
        aggregator = SlowAggregator()
        round_ = ActiveRound(round_id="r", kind=pb.TRAINING, model_id="m", aggregator=aggregator)  # type: ignore[arg-type]
        for i in range(10):
            round_.expect(f"t{i}", f"c{i}")
        threads = [threading.Thread(target=round_.submit_update, args=(
            update(f"c{i}", f"t{i}", f"c{i}:u", round_id="r", parent="m"), Cache())) for i in range(10)]
        for thread in threads:
            thread.start()
        assert round_.wait(30)
        round_.close()
        assert len(round_.updates) == 10 and aggregator.folded == 10, (trial, len(round_.updates), aggregator.folded)
        for thread in threads:
            thread.join()


def test_an_aggregate_is_hashed_while_first_sent_then_served_with_its_digest(tmp_path: Path) -> None:
    """The combiner's own models (aggregates) have no digest until sent: the first download
    hashes on the way and the cache keeps it; a stream cut short keeps nothing."""
    import hashlib

    cache = ModelCache(tmp_path / "cache")
    model_id = cache.new_id()
    helper.save({"w": np.arange(300_000, dtype=np.float32)}, cache.path(model_id))
    expected = hashlib.sha256(cache.path(model_id).read_bytes()).hexdigest()

    partial = cache.chunks(model_id)
    next(partial), next(partial)  # header, first data chunk, then the receiver goes away
    partial.close()
    assert cache.held(model_id).sha256 == cache.held(model_id).xxh3 == ""

    first = list(cache.chunks(model_id))
    checksum = xxh3_file(cache.path(model_id))
    assert first[-1].trailer.sha256 == expected and first[-1].trailer.xxh3 == checksum
    assert (cache.held(model_id).sha256, cache.held(model_id).xxh3) == (expected, checksum)
    cache.path(model_id).chmod(0o644)
    with open(cache.path(model_id), "r+b") as f:  # if the second send hashed again, it would
        f.write(b"\0")                            # now disagree with the kept digests
    again = list(cache.chunks(model_id))[-1].trailer
    assert (again.sha256, again.xxh3) == (expected, checksum)  # so a receiver refuses the damaged bytes


def test_a_client_cannot_name_its_upload_after_the_global_model(tmp_path: Path) -> None:
    """The cache adopts by sha256, so it records only a sha256 it verified: an upload whose
    trailer claims the hash of other bytes is refused, and nothing can be adopted from it."""
    import hashlib

    cache = ModelCache(tmp_path / "cache")
    global_model, upload = tmp_path / "global", tmp_path / "upload"
    helper.save({"w": np.ones(1000, np.float32)}, global_model)
    helper.save({"w": np.full(1000, 9.0, np.float32)}, upload)  # same size, other values
    digest, size = hashlib.sha256(global_model.read_bytes()).hexdigest(), global_model.stat().st_size
    with pytest.raises(TransferError, match="sha256 mismatch"):
        cache.receive(file_chunks(upload, model_id="squat", client_name="mallory", sha256=digest))
    assert not cache.exists("squat") and not cache.adopt("trail-1", digest, size)
    # the same claim, true this time (the reducer's push), is kept and adoptable
    cache.receive(file_chunks(global_model, model_id="pushed", client_name="reducer", sha256=digest))
    assert cache.held("pushed").sha256 == digest and cache.adopt("trail-1", digest, size)


def test_a_model_the_cache_holds_is_adopted_under_a_new_id_not_sent_again(tmp_path: Path) -> None:
    """With one combiner the reducer's next push is the combiner's own aggregate: it is
    linked under the trail's id on the digest the cache learnt when the aggregate was sent."""
    import hashlib

    cache = ModelCache(tmp_path / "cache")
    aggregate = cache.new_id()
    helper.save({"w": np.arange(1000, dtype=np.float32)}, cache.path(aggregate))
    data = cache.path(aggregate).read_bytes()
    digest, size = hashlib.sha256(data).hexdigest(), len(data)
    assert not cache.adopt("trail-1", digest, size)  # digest not known until the model is sent
    list(cache.chunks(aggregate))  # the reducer fetches it
    assert not cache.adopt("trail-1", "0" * 64, size) and not cache.adopt("trail-1", digest, size + 1)
    assert not cache.exists("trail-1")
    other = tmp_path / "other"
    helper.save({"w": np.zeros(3, np.float32)}, other)
    cache.receive(file_chunks(other, model_id="taken", client_name="reducer"))
    assert not cache.adopt("taken", digest, size)  # an id never names other bytes
    # "taken" arrived without a sha256: an empty hash must not match it (nor anything)
    assert not cache.adopt("blank", "", cache.path("taken").stat().st_size) and not cache.exists("blank")
    assert cache.path("taken").read_bytes() == other.read_bytes()

    assert cache.adopt("trail-1", digest, size) and cache.adopt("trail-1", digest, size)  # idempotent
    assert cache.path("trail-1").read_bytes() == data
    cache.prune({"trail-1"})  # the aggregate's own id goes; the adopted model stays whole
    assert not cache.exists(aggregate) and cache.path("trail-1").read_bytes() == data
    trailer = list(cache.chunks("trail-1"))[-1].trailer
    assert trailer.sha256 == digest and trailer.xxh3 == xxh3_file(cache.path("trail-1"))


def test_a_strategy_may_take_an_update_from_an_older_model_at_a_weight_of_its_choosing(tmp_path: Path) -> None:
    """The interface asynchronous rounds stand on: FedAvg refuses a stale update; a strategy
    whose ``staleness_weight`` takes it sees its older base model and its discounted weight."""
    seen: list[Update] = []

    class HalfForStale(FedAvg):
        name = "half-for-stale"

        def staleness_weight(self, update: Update) -> float:
            return 0.5 if update.base_model == "older" else 0.0

        def add(self, update: Update) -> None:
            seen.append(update)
            super().add(update)

    cache = ModelCache(tmp_path / "cache")
    helper.save({"w": np.zeros(4, np.float32)}, tmp_path / "global")
    for strategy, accepted in ((FedAvg(helper), False), (HalfForStale(helper), True)):
        round_ = ActiveRound(round_id="r1", kind=pb.TRAINING, model_id="global", aggregator=strategy)
        strategy.start(tmp_path / "global")
        round_.expect("t-a", "alice")
        stale = update("alice", "t-a", upload(tmp_path, cache, "alice", 3.0), examples=10, parent="older")
        if not accepted:
            with pytest.raises(RejectedReport, match="stale update: trained from model 'older'"):
                round_.submit_update(stale, cache)
            continue
        round_.submit_update(stale, cache)
        round_.close()
        round_.settle(cache)
        assert [(u.sender, u.base_model, u.weight) for u in seen] == [("alice", "older", 5.0)]
        assert seen[0].received_at > 0


def test_task_states_move_forward_only_and_end_once() -> None:
    """The per-client state machine behind the live view and the timeline, on a fake clock:
    chosen -> downloading -> training -> uploading -> reported, timed on the combiner's
    clock; a phase out of order, a repeat, another's task or a phase of the other kind of
    task is refused with the gRPC code the client gets, and changes nothing."""
    import grpc

    from fedtier.combiner.round import ProgressRefused, TaskStates

    now = [100.0]
    states = TaskStates(pb.TRAINING, clock=lambda: now[0])
    states.chosen("t-a", "alice")
    states.chosen("t-b", "bob")

    def view() -> dict[str, pb.ClientProgress]:
        return {p.client_name: p for p in states.snapshot()}

    assert {c: p.state for c, p in view().items()} == {"alice": "chosen", "bob": "chosen"}
    now[0] = 101.0
    states.progress("t-a", "alice", pb.PHASE_DOWNLOADING)
    now[0] = 102.5
    states.progress("t-a", "alice", pb.PHASE_TRAINING)
    assert view()["alice"].state == "training" and view()["alice"].state_for_s == 0
    now[0] = 104.0
    assert view()["alice"].state_for_s == 1.5 and view()["bob"].state_for_s == 4.0
    refusals = [
        (("t-a", "alice", pb.PHASE_DOWNLOADING), grpc.StatusCode.INVALID_ARGUMENT, "only move forward"),
        (("t-a", "alice", pb.PHASE_TRAINING), grpc.StatusCode.INVALID_ARGUMENT, "only move forward"),
        (("t-a", "alice", pb.PHASE_VALIDATING), grpc.StatusCode.INVALID_ARGUMENT, "phase must be one of"),
        (("t-a", "alice", 99), grpc.StatusCode.INVALID_ARGUMENT, "phase must be one of"),
        (("t-a", "bob", pb.PHASE_UPLOADING), grpc.StatusCode.FAILED_PRECONDITION, "'bob' holds no task"),
        (("t-x", "alice", pb.PHASE_UPLOADING), grpc.StatusCode.FAILED_PRECONDITION, "holds no task"),
    ]
    for args, code, message in refusals:
        with pytest.raises(ProgressRefused, match=message) as refused:
            states.progress(*args)
        assert refused.value.code == code, args
    assert view()["alice"].state == "training" and view()["bob"].state == "chosen"  # nothing changed
    states.progress("t-a", "alice", pb.PHASE_UPLOADING)
    now[0] = 105.0
    states.finished("t-a", "reported")
    states.finished("t-b", "failed", "went offline")
    states.finished("t-a", "failed", "late")  # an ended task stays as it ended
    with pytest.raises(ProgressRefused, match="already reported") as refused:
        states.progress("t-a", "alice", pb.PHASE_UPLOADING)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    alice, bob = view()["alice"], view()["bob"]
    assert dict(alice.started) == {"download": 1.0, "train": 2.5, "upload": 4.0} and alice.ended == 5.0
    assert (bob.state, bob.detail, bob.ended, dict(bob.started)) == ("failed", "went offline", 5.0, {})
    states.capped("alice", "counted as 7")
    assert view()["alice"].state == "capped" and states.task_of("alice") is None

    validating = TaskStates(pb.VALIDATION, clock=lambda: now[0])
    validating.chosen("v", "alice")
    with pytest.raises(ProgressRefused, match="PHASE_DOWNLOADING, PHASE_VALIDATING"):
        validating.progress("v", "alice", pb.PHASE_TRAINING)
    validating.progress("v", "alice", pb.PHASE_VALIDATING)  # a cached model: no download to report
    assert validating.snapshot()[0].state == "validating"


def test_the_rounds_reports_end_each_clients_state(setup) -> None:
    """ActiveRound drives the states from what it accepts: a reported update, a rejected one,
    a task that never answered; progress for another round or after close is refused."""
    import grpc

    from fedtier.combiner.round import ProgressRefused

    tmp_path, cache, round_ = setup
    round_.expect("t-c", "carol")
    round_.progress(pb.TaskProgress(client_name="alice", task_id="t-a", round_id="r1", phase=pb.PHASE_DOWNLOADING))
    with pytest.raises(ProgressRefused, match="round 'r0'") as refused:
        round_.progress(pb.TaskProgress(client_name="bob", task_id="t-b", round_id="r0", phase=pb.PHASE_DOWNLOADING))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    round_.submit_update(update("alice", "t-a", upload(tmp_path, cache, "alice", 1.0)), cache)
    with pytest.raises(RejectedReport):
        round_.submit_update(update("bob", "t-b", upload(tmp_path, cache, "bob", 1.0), parent="old"), cache)
    round_.close()
    with pytest.raises(ProgressRefused, match="closed"):
        round_.progress(pb.TaskProgress(client_name="carol", task_id="t-c", round_id="r1", phase=pb.PHASE_TRAINING))
    live = {p.client_name: p for p in round_.live().clients}
    assert {c: p.state for c, p in live.items()} == {"alice": "reported", "bob": "failed", "carol": "failed"}
    assert live["bob"].detail.startswith("update rejected: stale update")
    assert live["carol"].detail == "no answer before the round closed"
    assert "download" in live["alice"].started and live["alice"].ended >= live["alice"].started["download"]
