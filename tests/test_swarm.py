"""The swarm: many real clients in one process, against an in-process combiner."""
from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, wait_until
from fedtier.client.swarm import Swarm
from fedtier.launch.cli import build_parser
from fedtier.combiner.server import CombinerServer, CombinerSettings
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.combiner_client import CombinerClient

NOOP = ROOT / "bench" / "projects" / "noop"  # train copies the model through and reports 100 examples

SLOT_PROBE = '''
import shutil, threading, time
_lock = threading.Lock()
running = 0
most = 0

def train(in_path, out_path, ctx):
    global running, most
    with _lock:
        running += 1
        most = max(most, running)
    time.sleep(0.3)
    with _lock:
        running -= 1
    shutil.copyfile(in_path, out_path)
    return {"num_examples": 1}

def validate(in_path, ctx):
    return {"num_examples": 1}
'''


def swarm_threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"{prefix}-")]


def threads_outside_server() -> list[threading.Thread]:
    """This process's threads but the in-process combiner's (its worker pool, grpc_N, keeps
    a thread per RPC it ever ran at once until the server stops, and its polling thread)."""
    return [t for t in threading.enumerate() if not t.name.startswith("grpc_") and "(_serve)" not in t.name]


@pytest.fixture
def combiner(tmp_path: Path):
    server = CombinerServer(CombinerSettings(name="c", host="127.0.0.1", port=0, work_dir=tmp_path / "combiner",
                                             heartbeat_interval=0.3, heartbeat_timeout=5.0, max_workers=128))
    port = server.start()
    handle = CombinerClient(f"127.0.0.1:{port}")
    seed = tmp_path / "seed"
    get_helper("numpy").save({"w": np.arange(6, dtype=np.float32)}, seed)
    handle.upload_model(seed, "seed")
    yield server, handle
    handle.close()
    server.stop(0)


def train_round(handle: CombinerClient, clients: int) -> pb.RoundResult:
    config = {"clients_required": clients, "round_timeout": 60, "wait_for_clients": 30, "validate": False}
    return handle.start_round(pb.RoundRequest(session_id="s", round_id=uuid.uuid4().hex, kind=pb.TRAINING,
                                              model_id="seed", config_json=json.dumps(config)), timeout=120)


@pytest.mark.timeout(90)
def test_twenty_clients_connect_train_and_stop(combiner, tmp_path: Path) -> None:
    server, handle = combiner
    before = set(threads_outside_server())
    baseline = len(before)
    swarm = Swarm(20, "sw", project=NOOP, combiner=f"127.0.0.1:{server.port}", work_dir=tmp_path / "swarm",
                  start_interval=0.0, backoff_initial=0.1)
    try:
        swarm.start()
        wait_until(lambda: len(server.registry.active_names()) == 20, 30, "20 active clients")
        assert server.registry.active_names() == sorted(f"sw-{k}" for k in range(20))
        # idle clients hold no thread: their streams and heartbeats are coroutines on one loop
        assert swarm_threads("sw") == []
        added = [t.name for t in threads_outside_server() if t not in before]
        assert len(added) <= 4, added  # the loop's thread, its stop relay, gRPC's poller: not one per client

        result = train_round(handle, 20)
        assert result.success, result.error
        assert sorted(u.client_name for u in result.updates) == sorted(swarm.names)
        wait_until(lambda: swarm.totals()["train"] == 20, 10, "every client to count its task")
        stats = swarm.stats()
        assert all(s == {"connects": 1, "train": 1, "validate": 0, "failed": 0, "dropouts": 0, "crashes": 0,
                        "offline_periods": 0} for s in stats.values()), stats
        assert len(server.registry.active_names()) == 20  # still connected after the round
    finally:
        started = time.monotonic()
        ended = swarm.stop(timeout=15)
        stop_seconds = time.monotonic() - started
    assert ended and swarm.running() == 0
    assert stop_seconds < 5, stop_seconds  # about one heartbeat interval, not a timeout
    assert swarm_threads("sw") == []
    assert len(threads_outside_server()) <= baseline + 1, (baseline, threads_outside_server())
    wait_until(lambda: server.registry.active_names() == [], 10, "the combiner to see the clients leave")


@pytest.mark.timeout(90)
def test_task_slots_bound_the_tasks_running_at_once(combiner, tmp_path: Path) -> None:
    server, handle = combiner
    project = tmp_path / "probe"
    project.mkdir()
    (project / "slot_probe.py").write_text(SLOT_PROBE)
    (project / "fedn.yaml").write_text("helper: numpy\nentry_points:\n  train:\n    python: slot_probe:train\n"
                                       "  validate:\n    python: slot_probe:validate\n")
    swarm = Swarm(12, "slot", project=project, combiner=f"127.0.0.1:{server.port}", work_dir=tmp_path / "swarm",
                  task_slots=3, start_interval=0.0)
    try:
        swarm.start()
        wait_until(lambda: len(server.registry.active_names()) == 12, 30, "12 active clients")
        result = train_round(handle, 12)
        assert result.success, result.error
        probe = sys.modules["slot_probe"]  # the project's module, imported once for the whole swarm
        assert probe.most == 3, probe.most  # the slots were all used, and never more
    finally:
        assert swarm.stop(timeout=15)


def test_swarm_arguments(tmp_path: Path) -> None:
    args = build_parser().parse_args(["swarm", "--clients", "50", "--reducer", "http://127.0.0.1:8090",
                                      "--project", str(NOOP), "--name-prefix", "s1", "--partition-count", "200",
                                      "--partition-offset", "50"])
    assert (args.clients, args.name_prefix, args.partition_count, args.partition_offset, args.task_slots) == \
        (50, "s1", 200, 50, None)  # None: the swarm's default (8, or 2 per worker with a pool)
    swarm = Swarm(3, "p", project=NOOP, reducer_url="http://127.0.0.1:1", partition_count=5, partition_offset=4,
                  work_dir=tmp_path)
    assert [(c.settings.partition_index, c.settings.num_partitions) for c in swarm.clients] == [(4, 5), (0, 5), (1, 5)]
    with pytest.raises(ValueError):
        Swarm(2, "x", project=NOOP, reducer_url="http://a", combiner="b:1")
    with pytest.raises(ValueError):
        Swarm(0, "x", project=NOOP, combiner="b:1")
    assert swarm.task_slots == 8 and swarm.pool is None
    pooled = Swarm(2, "p", project=NOOP, combiner="b:1", workers=5, work_dir=tmp_path)  # no process until started
    assert pooled.task_slots == 10 and pooled.pool is not None and pooled.pool.pids() == []
    pooled.stop()
    for bad in ({"workers": -1}, {"workers": 257}, {"worker_threads": 0}, {"worker_threads": 65}):
        with pytest.raises(ValueError, match="workers|threads"):
            Swarm(2, "x", project=NOOP, combiner="b:1", work_dir=tmp_path, **bad)
