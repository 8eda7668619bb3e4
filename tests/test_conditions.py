"""Client conditions (client/conditions.py): checked input, the throttle, and each condition's
effect over real processes (a combiner and a swarm of clients in groups, rounds driven directly)."""
from __future__ import annotations

import asyncio

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, ProcessGroup, free_port, wait_for_port, wait_until
from fedtier.client.client import ClientSettings, FedClient, TaskSlots
from fedtier.client.conditions import Conditions, ConditionsError, Throttle, data_bytes, throttled
from fedtier.client.swarm import load_conditions, summarize_conditions
from fedtier.helpers import get_helper
from fedtier.launch.cli import _conditions, build_parser
from fedtier.config import ConfigError
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.combiner_client import CombinerClient
from fedtier.transport.streams import file_chunks

NOOP = ROOT / "bench" / "projects" / "noop"

# training takes a known time, so a speed factor shows as a multiple of it
SLEEPY = '''
import shutil, time

def train(in_path, out_path, ctx):
    time.sleep(0.25)
    shutil.copyfile(in_path, out_path)
    return {"num_examples": 10}

def validate(in_path, ctx):
    return {"num_examples": 10}
'''


# ---------------------------------------------------------------- checked input
@pytest.mark.parametrize("data, field", [
    ({"speed": 0}, "c.speed"),
    ({"speed": 1.5}, "c.speed"),           # faster than the hardware cannot be enforced
    ({"speed": "fast"}, "c.speed"),
    ({"speed": float("nan")}, "c.speed"),
    ({"upload_bps": -1}, "c.upload_bps"),
    ({"download_bps": 10}, "c.download_bps"),  # nonzero but below 1 KiB/s
    ({"download_bps": 1e12}, "c.download_bps"),
    ({"latency_s": 61}, "c.latency_s"),
    ({"dropout": 1.01}, "c.dropout"),
    ({"crash": True}, "c.crash"),
    ({"rejoin_s": 3601}, "c.rejoin_s"),
    ({"seed": -1}, "c.seed"),
    ({"seed": 1.5}, "c.seed"),
    ({"group": "a\nb"}, "c.group"),
    ({"offline": [[5, 5]]}, "c.offline[0]"),
    ({"offline": [[0, 1], [-1, 2]]}, "c.offline[1]"),
    ({"offline": [[0, 1, 2]]}, "c.offline[0]"),
    ({"offline": "0-5"}, "c.offline"),
    ({"offline": [[i, i + 0.5] for i in range(1001)]}, "c.offline"),
    ({"sped": 0.5}, "c.sped"),             # a typo is refused, not ignored
])
def test_a_bad_condition_is_refused_naming_its_key(data: dict, field: str) -> None:
    with pytest.raises(ConditionsError) as caught:
        Conditions.from_dict(data, "c")
    assert caught.value.field == field
    assert str(caught.value).startswith(field + ":")


def test_conditions_round_trip_and_offline_windows_are_normalised() -> None:
    c = Conditions.from_dict({"group": "slow", "speed": 0.25, "upload_bps": 1e6, "download_bps": 2048,
                              "latency_s": 0.1, "dropout": 0.3, "crash": 0.05, "rejoin_s": 2,
                              "offline": [[30, 60], [0, 10], [55, 70], [70, 80]], "epoch": 1.7e9, "seed": 7})
    assert c.offline == ((0.0, 10.0), (30.0, 80.0))  # sorted; overlapping and touching windows merged
    assert Conditions.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert Conditions.from_dict({}) == Conditions() and Conditions().changes() == {}
    assert "speed=0.25" in c.describe() and c.describe().startswith("slow:")
    assert summarize_conditions([None, Conditions(), c, c]) == f"2 of 4 clients: 2 x {{{c.describe()}}}"


def test_swarm_and_client_conditions_arguments(tmp_path: Path) -> None:
    path = tmp_path / "conditions.json"
    path.write_text(json.dumps({"clients": [{"speed": 0.5}, None, {"speed": 2}]}))
    with pytest.raises(ConditionsError) as caught:
        load_conditions(path, 3)
    assert caught.value.field == "clients[2].speed"
    with pytest.raises(ConditionsError, match=r"exactly --clients \(4\) entries, got 3"):
        load_conditions(path, 4)
    path.write_text(json.dumps({"clients": [{"speed": 0.5}, None]}))
    assert load_conditions(path, 2) == [Conditions(speed=0.5), None]
    args = build_parser().parse_args(["swarm", "--clients", "2", "--combiner", "h:1", "--project", str(NOOP),
                                      "--conditions", str(path)])
    assert args.conditions == str(path)
    assert _conditions('{"latency_s": 0.5}') == Conditions(latency_s=0.5)
    with pytest.raises(ConditionsError, match=r"^--conditions\.dropout:"):
        _conditions('{"dropout": 2}')
    with pytest.raises(ConfigError, match="--conditions"):
        _conditions('{"dropout": ')


# ---------------------------------------------------------------- the throttle
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_throttle_paces_a_stream_at_its_rate_however_it_is_cut(tmp_path: Path) -> None:
    clock = FakeClock()
    throttle = Throttle(10_000, clock=clock, sleep=clock.sleep)
    for n in (1, 4_999, 30_000, 15_000):  # 50,000 bytes in uneven chunks
        throttle.take(n)
    assert clock.now == pytest.approx(5.0)
    clock.now += 100  # idle: the credit earned is capped at the burst (a tenth of a second)
    before = clock.now
    throttle.take(20_000)
    assert clock.now - before == pytest.approx(1.9)

    # a real file's chunks: only data bytes count, and an upload's chunks are cut small
    model = tmp_path / "m"
    model.write_bytes(b"x" * 300_000)
    clock = FakeClock()
    throttle = Throttle(100_000, clock=clock, sleep=clock.sleep)
    chunks = list(throttled(file_chunks(model, chunk_size=throttle.chunk_size(1 << 20)), throttle, data_bytes))
    assert clock.now == pytest.approx(3.0)
    assert len(chunks) == 2 + 300_000 // throttle.chunk_size(1 << 20) + 1  # header, 16 KiB chunks, trailer


def test_a_client_waiting_out_its_conditions_leaves_its_task_slot_to_others(tmp_path: Path) -> None:
    slow = FedClient(ClientSettings(name="slow", project=NOOP, combiner="127.0.0.1:1", work_dir=tmp_path / "s",
                                    conditions=Conditions(speed=0.5)))
    other = FedClient(ClientSettings(name="other", project=NOOP, combiner="127.0.0.1:1", work_dir=tmp_path / "o"))
    timings: dict[str, float] = {}
    slow._handle = lambda task, stub, transfer: slow._slow_down(0.3, timings)  # its task: only the wait
    other._handle = lambda task, stub, transfer: None

    async def two_tasks() -> float:
        slots = TaskSlots(1)
        waiting = asyncio.create_task(slots.run(slow, pb.Task(), None, None))
        await asyncio.sleep(0.05)  # the slow task holds the one slot, then gives it back to wait
        started = time.monotonic()
        await asyncio.wait_for(slots.run(other, pb.Task(), None, None), 0.25)  # else: the slot stayed held
        took = time.monotonic() - started
        await waiting
        assert not slots._free.locked()  # type: ignore[union-attr]  # and both gave it back at the end
        return took

    assert asyncio.run(two_tasks()) < 0.25
    assert timings == {"slowdown": pytest.approx(0.3)}


# ---------------------------------------------------------------- over real processes


def active(handle: CombinerClient) -> set[str]:
    return {c.name for c in handle.status(timeout=10).clients if c.active}


def train_round(handle: CombinerClient, model: str, required: int) -> pb.RoundResult:
    config = {"clients_required": required, "round_timeout": 30, "wait_for_clients": 10, "validate": False}
    return handle.start_round(pb.RoundRequest(session_id="s", round_id=uuid.uuid4().hex, kind=pb.TRAINING,
                                              model_id=model, config_json=json.dumps(config)), timeout=60)


@pytest.mark.timeout(90)
def test_conditions_take_effect_over_the_real_protocol(procs: ProcessGroup, tmp_path: Path) -> None:
    """A swarm of nine clients in groups against a combiner: the slow group takes longer per
    task, dropped-out and crashed clients are absent from a round that still meets its
    quorum, a bandwidth limit holds, an offline window keeps a client out of a round."""
    project = tmp_path / "sleepy"
    project.mkdir()
    (project / "sleepy.py").write_text(SLEEPY)
    (project / "fedn.yaml").write_text("helper: numpy\nentry_points:\n  train:\n    python: sleepy:train\n"
                                       "  validate:\n    python: sleepy:validate\n")
    seed = tmp_path / "seed"
    get_helper("numpy").save({"w": np.zeros(250_000, dtype=np.float32)}, seed)  # about 1 MB
    size = seed.stat().st_size
    transfer, latency, away_for = 1.0, 0.1, 6.0  # the thin client's model takes 1 s each way
    bps = size / transfer

    port = free_port()
    combiner = procs.start("combiner", "combiner", "--name", "c", "--host", "127.0.0.1", "--port", str(port),
                           "--work-dir", str(tmp_path / "c"))
    wait_for_port(port, proc=combiner)
    epoch = time.time()
    groups = [{"group": "fast"}, {"group": "fast"}, {"group": "slow", "speed": 0.2}, {"group": "slow", "speed": 0.2},
              {"group": "flaky", "dropout": 1.0, "rejoin_s": 1}, {"group": "thin", "upload_bps": bps,
                                                                  "download_bps": bps, "latency_s": latency},
              {"group": "away", "offline": [[0, away_for]], "epoch": epoch},
              {"group": "crashy", "crash": 1.0, "rejoin_s": 1},
              # so slow that its window begins while it works on round 1's task
              {"group": "leaves", "speed": 0.01, "offline": [[away_for, away_for + 60]], "epoch": epoch}]
    conditions = tmp_path / "conditions.json"
    conditions.write_text(json.dumps({"clients": groups}))
    stats = tmp_path / "stats.json"
    procs.start("swarm", "swarm", "--clients", str(len(groups)), "--combiner", f"127.0.0.1:{port}",
                "--project", str(project), "--name-prefix", "c", "--work-dir", str(tmp_path / "swarm"),
                "--conditions", str(conditions), "--stats", str(stats), "--stats-interval", "0.2")
    handle = CombinerClient(f"127.0.0.1:{port}")
    try:
        handle.upload_model(seed, "seed")
        present = {f"c-{k}" for k in range(len(groups))} - {"c-6"}
        wait_until(lambda: present <= active(handle), 30, "all clients but the offline one active", procs)
        assert "c-6" not in active(handle)  # (d) not connected during its offline window

        started = time.time()
        assert started < epoch + away_for - 0.5, "the swarm took too long to start to test the offline window"
        first = train_round(handle, "seed", required=5)
        assert first.success, first.error
        timeline = {c.client_name: c for c in first.clients}
        updates = {u.client_name: u for u in first.updates}
        # (a) speed: the combiner's own clock, from training started to upload started
        training = {name: timeline[name].started["upload"] - timeline[name].started["train"]
                    for name in ("c-0", "c-1", "c-2", "c-3")}
        fast, slow = max(training["c-0"], training["c-1"]), min(training["c-2"], training["c-3"])
        assert slow >= 0.25 / 0.2 * 0.9 and slow > 2 * fast, training
        assert updates["c-2"].timings["train"] >= 1.1 and updates["c-2"].timings["slowdown"] > 0.9
        # (c) bandwidth (+ latency): download and upload each take size / bps within 35 %
        thin = timeline["c-5"]
        download = thin.started["train"] - thin.started["download"]
        upload = thin.ended - thin.started["upload"]
        assert 0.65 * (transfer + latency) <= download <= 1.35 * (transfer + latency), (download, dict(thin.started))
        assert 0.65 * (transfer + 2 * latency) <= upload <= 1.35 * (transfer + 2 * latency), (upload, thin.ended)
        unlimited = timeline["c-0"]
        assert unlimited.started["train"] - unlimited.started["download"] < 0.5 * download

        # (b) dropout and crash: chosen, absent from the updates, failed at once; the quorum of 5 was met
        assert set(updates) == {"c-0", "c-1", "c-2", "c-3", "c-5"}, (list(updates), list(first.failures))
        assert {timeline["c-4"].state, timeline["c-7"].state} == {"failed"}
        assert "disconnected" in timeline["c-4"].detail and "disconnected" in timeline["c-7"].detail
        # (d) offline: never chosen in a round started in its window; torn down mid-task when one begins
        assert "c-6" not in timeline
        assert timeline["c-8"].state == "failed" and "disconnected" in timeline["c-8"].detail
        assert started + timeline["c-8"].ended == pytest.approx(epoch + away_for, abs=0.5)

        # (d) back after its window, not before, and chosen again; another one's window began
        # while it was connected: torn down, and not chosen
        wait_until(lambda: "c-6" in (now := active(handle)) and "c-8" not in now, 15,
                   "one client back from its offline window, another gone into its own", procs)
        assert time.time() >= epoch + away_for
        second = train_round(handle, first.model_id, required=6)
        assert second.success, second.error
        assert {"c-0", "c-1", "c-2", "c-3", "c-5", "c-6"} <= {u.client_name for u in second.updates}
        assert not {"c-4", "c-7", "c-8"} & {u.client_name for u in second.updates}
        assert "c-8" not in {c.client_name for c in second.clients}

        counts = wait_until(lambda: (s := json.loads(stats.read_text())["clients"]) and
                            s["c-5"]["train"] == 2 and s, 10, "the swarm's stats", procs)
        assert counts["c-4"]["dropouts"] >= 1 and counts["c-4"]["train"] == 0
        assert counts["c-7"]["crashes"] >= 1 and counts["c-7"]["train"] == 0
        assert counts["c-6"]["offline_periods"] == 1 and counts["c-6"]["train"] == 1
        assert counts["c-8"]["offline_periods"] == 1 and counts["c-8"]["connects"] == 1
        assert all(counts[f"c-{k}"][key] == 0 for k in (0, 1, 2, 3, 5)
                   for key in ("dropouts", "crashes", "offline_periods"))
        assert "lab conditions: 7 of 9 clients" in procs.log("swarm")
    finally:
        handle.close()
