"""Liveness at scale: a combiner's clients are active while their task streams are open.

Real processes: a combiner with a heartbeat timeout far below its clients' heartbeat
interval (so heartbeats cannot be what keeps them active), a swarm of virtual clients and
one more client process, two rounds needing every client, and a watcher polling the
combiner's Status the whole time. bench/scale_out.py measures the same at 1,000 and
10,000 clients (docs/performance.md, "Liveness")."""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, ProcessGroup, free_port, wait_for_port, wait_until
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.combiner_client import CombinerClient

NOOP = ROOT / "bench" / "projects" / "noop"
SWARM = 200


class Watcher:
    """Polls Status; counts each time a client seen active before is not active now."""

    def __init__(self, handle: CombinerClient) -> None:
        self.handle = handle
        self.seen: set[str] = set()
        self.inactive: dict[str, int] = {}
        self.polls = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            clients = self.handle.status(timeout=10).clients
            active = {c.name for c in clients if c.active}
            for name in self.seen - active:
                self.inactive[name] = self.inactive.get(name, 0) + 1
            self.seen |= active
            self.polls += 1


def active(handle: CombinerClient) -> set[str]:
    return {c.name for c in handle.status(timeout=10).clients if c.active}


@pytest.mark.timeout(60)
def test_swarm_stays_active_with_a_short_heartbeat_timeout_and_a_killed_client_leaves(
        procs: ProcessGroup, tmp_path: Path) -> None:
    port = free_port()
    # heartbeats every 10 s (the default), a 0.5 s timeout: FEDn's rule would call every client
    # inactive between two heartbeats; the open stream keeps them active
    combiner = procs.start("combiner", "combiner", "--name", "c", "--host", "127.0.0.1", "--port", str(port),
                           "--work-dir", str(tmp_path / "c"), "--heartbeat-timeout", "0.5")
    wait_for_port(port, proc=combiner)
    address = f"127.0.0.1:{port}"
    procs.start("swarm", "swarm", "--clients", str(SWARM), "--combiner", address, "--project", str(NOOP),
                "--name-prefix", "s", "--work-dir", str(tmp_path / "swarm"), "--start-interval", "0.002")
    procs.start("victim", "client", "--combiner", address, "--project", str(NOOP), "--name", "victim",
                "--work-dir", str(tmp_path / "victim"))
    handle = CombinerClient(address)
    watcher = Watcher(handle)
    try:
        seed = tmp_path / "seed"
        get_helper("numpy").save({"w": np.arange(6, dtype=np.float32)}, seed)
        handle.upload_model(seed, "seed")
        everyone = {f"s-{k}" for k in range(SWARM)} | {"victim"}
        wait_until(lambda: active(handle) == everyone, 30, f"{SWARM + 1} active clients", procs)
        watcher.thread.start()

        config = {"clients_required": SWARM + 1, "round_timeout": 30, "wait_for_clients": 5, "validate": False}
        model = "seed"
        for _ in range(2):
            result = handle.start_round(pb.RoundRequest(
                session_id="s", round_id=uuid.uuid4().hex, kind=pb.TRAINING, model_id=model,
                config_json=json.dumps(config)), timeout=60)
            assert result.success, result.error
            assert {u.client_name for u in result.updates} == everyone
            model = result.model_id
        time.sleep(1.0)  # a full heartbeat timeout and more after the last round, still polled
        watcher.stop.set()
        watcher.thread.join(15)
        assert watcher.polls >= 5
        assert watcher.inactive == {}, f"live clients seen inactive: {sorted(watcher.inactive)[:20]}"

        procs.kill("victim")  # SIGKILL: its connection closes with the process
        killed = time.monotonic()
        wait_until(lambda: "victim" not in active(handle), 5, "the killed client inactive", procs)
        assert time.monotonic() - killed < 5
        assert active(handle) == everyone - {"victim"}
    finally:
        watcher.stop.set()
        handle.close()
