"""Faults injected into real processes: the network keeps working and loses nothing."""
from __future__ import annotations

import io
import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import requests

from conftest import TEST_PROJECTS, ProcessGroup, free_port, wait_for_port, wait_until
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from test_combiner_network import push_seed, start_network

SHIFT = str(TEST_PROJECTS / "numpy_shift")
helper = get_helper("numpy")


# ---------------------------------------------------------------- a client dies
def run_round_in_background(combiner, **config) -> tuple[threading.Thread, dict]:
    out: dict = {}
    body = {"clients_required": 2, "round_timeout": 120, "wait_for_clients": 30, "task": {"sleep": 2.5}}
    body.update(config)
    request = pb.RoundRequest(session_id="s", round_id=uuid.uuid4().hex, kind=pb.TRAINING, model_id="seed",
                              config_json=json.dumps(body))

    def run() -> None:
        started = time.monotonic()
        out["result"] = combiner.start_round(request, timeout=200)
        out["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_client_killed_mid_round(procs: ProcessGroup, tmp_path: Path) -> None:
    combiner = start_network(procs, tmp_path, clients=3)
    push_seed(combiner, tmp_path)
    # quorum holds (2 of 3): the round completes with the others, long before its timeout
    thread, out = run_round_in_background(combiner, clients_required=2)
    time.sleep(1.0)
    procs.kill("client-1")
    thread.join()
    result = out["result"]
    assert result.success, result.error
    assert sorted(u.client_name for u in result.updates) == ["client-0", "client-2"]
    assert any(f.startswith("client-1: disconnected") for f in result.failures), result.failures
    assert out["seconds"] < 30, out["seconds"]  # not the 120 s round timeout

    # quorum lost (3 required, 2 left after another death): the round fails cleanly, with the reason
    procs.start("client-1b", "client", "--combiner", combiner.address, "--project", SHIFT, "--name", "client-1",
                "--partition", "1/3", "--work-dir", str(tmp_path / "client-1b"))
    wait_until(lambda: combiner.status().active_clients == 3, what="client-1 back")
    thread, out = run_round_in_background(combiner, clients_required=3)
    time.sleep(1.0)
    procs.kill("client-2")
    thread.join()
    result = out["result"]
    assert not result.success
    assert "only 2 of 3 required updates" in result.error
    assert any(f.startswith("client-2: disconnected") for f in result.failures)
    assert out["seconds"] < 30


# ---------------------------------------------------------------- reducer-level networks
class Network:
    def __init__(self, procs: ProcessGroup, tmp_path: Path) -> None:
        self.procs = procs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"FEDTIER_DATA_DIR": str(tmp_path / "data")}
        self.combiner_ports: dict[str, int] = {}

    def reducer(self, name: str = "reducer") -> None:
        proc = self.procs.start(name, "reducer", "--host", "127.0.0.1", "--port", str(self.port), env=self.env)
        wait_for_port(self.port, proc=proc)

    def combiner(self, name: str, process: str | None = None) -> None:
        """Start combiner ``name`` (again on the same port); ``process`` names a restart's log."""
        port = self.combiner_ports.setdefault(name, free_port())
        self.procs.start(process or name, "combiner", "--name", name, "--host", "127.0.0.1", "--port", str(port),
                         "--reducer", self.url, "--heartbeat-interval", "0.3", "--heartbeat-timeout", "10",
                         env=self.env)

    def client(self, i: int, of: int) -> None:
        self.procs.start(f"client-{i}", "client", "--reducer", self.url, "--project", SHIFT, "--name", f"client-{i}",
                         "--partition", f"{i}/{of}", env=self.env)

    def get(self, path: str):
        return requests.get(self.url + path, timeout=10).json()

    def seed(self) -> None:
        data = helper.to_bytes({"w": np.zeros((3, 3), np.float32)})
        reply = requests.post(self.url + "/seed", files={"seed": ("seed", io.BytesIO(data))}, timeout=10)
        assert reply.status_code == 201, reply.text

    def start(self, **body) -> str:
        reply = requests.post(self.url + "/start", json={"validate": False, "round_timeout": 60, **body}, timeout=10)
        assert reply.status_code == 201, reply.text
        return reply.json()["session_id"]

    def finished(self, session_id: str, timeout: float = 120) -> dict:
        return wait_until(lambda: (s := self.get(f"/api/v1/sessions/{session_id}"))["status"] != "running" and s,
                          timeout=timeout, what="the session to end", procs=self.procs)

    def active_on(self, combiner: str) -> int:
        return sum(1 for c in self.get("/api/v1/clients") if c.get("combiner") == combiner and c.get("active"))

    def seeded_with_clients(self, clients: int = 2) -> None:
        """A reducer, combiner c0 and ``clients`` clients, seeded and all active: the start of most fault tests."""
        self.reducer()
        self.combiner("c0")
        wait_until(lambda: self.get("/api/v1/combiners"), what="c0 registered")
        self.seed()
        for i in range(clients):
            self.client(i, clients)
        wait_until(lambda: self.active_on("c0") == clients, what="clients", procs=self.procs)

    def training_running(self) -> bool:
        rounds = self.get("/api/v1/rounds")
        return bool(rounds) and rounds[-1]["status"] == "running" and self.get("/api/v1/status")["state"] == "monitoring"


def test_combiner_killed_mid_round_then_clients_move(procs: ProcessGroup, tmp_path: Path) -> None:
    net = Network(procs, tmp_path)
    net.reducer()
    net.combiner("c0")
    wait_until(lambda: len(net.get("/api/v1/combiners")) == 1, what="c0 registered")
    net.combiner("c1")
    wait_until(lambda: len(net.get("/api/v1/combiners")) == 2, what="c1 registered")
    net.seed()
    for i in range(4):
        net.client(i, 4)
    wait_until(lambda: net.active_on("c0") == 2 and net.active_on("c1") == 2, what="2 clients on each", procs=procs)

    session = net.start(rounds=1, clients_required=2, task={"sleep": 3})
    wait_until(net.training_running, what="training to start", procs=procs)
    time.sleep(0.5)
    procs.kill("c1")
    done = net.finished(session)
    assert done["rounds_succeeded"] == 1, net.get("/api/v1/rounds")
    round_doc = net.get(f"/api/v1/rounds/{done['round_ids'][0]}")
    by_name = {c["name"]: c for c in round_doc["combiners"]}
    assert by_name["c0"]["success"] and not by_name["c1"]["success"]
    assert len(round_doc["participants"]) == 2

    # c1's clients ask /assign again and land on c0; the next round needs all four
    wait_until(lambda: net.active_on("c0") == 4, timeout=90, what="c1's clients reassigned to c0", procs=procs)
    session = net.start(rounds=1, clients_required=4)
    done = net.finished(session)
    assert done["rounds_succeeded"] == 1
    assert len(net.get(f"/api/v1/rounds/{done['round_ids'][0]}")["participants"]) == 4


def test_reducer_killed_mid_session_and_restarted(procs: ProcessGroup, tmp_path: Path) -> None:
    net = Network(procs, tmp_path)
    net.seeded_with_clients(2)
    session = net.start(rounds=3, clients_required=2, task={"sleep": 2})
    wait_until(lambda: net.get(f"/api/v1/sessions/{session}")["rounds_succeeded"] == 1, what="round 1", procs=procs)
    wait_until(net.training_running, what="round 2 training", procs=procs)
    trail = net.get("/api/v1/models")
    assert len(trail) == 2
    procs.kill("reducer")

    net.reducer("reducer-2")
    assert net.get("/api/v1/models") == trail  # the committed trail is intact
    assert net.get(f"/api/v1/sessions/{session}")["status"] == "interrupted"
    interrupted = [r for r in net.get("/api/v1/rounds") if r["status"] == "failed"]
    assert len(interrupted) == 1 and "interrupted by a reducer restart" in interrupted[0]["error"]
    assert net.get("/api/v1/status")["state"] == "idle"

    # the combiner dropped the orphaned round; the next one starts from the latest committed model
    wait_until(lambda: net.active_on("c0") == 2, what="clients seen again", procs=procs)
    again = net.finished(net.start(rounds=1, clients_required=2))
    assert again["rounds_succeeded"] == 1, net.get("/api/v1/rounds")
    new_round = net.get(f"/api/v1/rounds/{again['round_ids'][0]}")
    assert new_round["model_in"] == trail[-1]["id"] and new_round["round"] == 2
    # the seed had to be uploaded; round 1's global model is c0's own aggregate: not sent back
    first_round = net.get(f"/api/v1/rounds/{trail[-1]['round_id']}")
    assert first_round["pushed"] == {"c0": "uploaded"} and new_round["pushed"] == {"c0": "adopted"}
    final = net.get("/api/v1/models")
    assert final[:2] == trail and final[2]["parent_id"] == trail[-1]["id"]


def test_combiner_restart_clients_inactive_until_back(procs: ProcessGroup, tmp_path: Path) -> None:
    """A combiner that dies and comes back on the same port before the reducer would call it
    offline: its clients are inactive in the reducer's view at once, and a round started right
    then waits for them to reconnect instead of counting the dead process's clients."""
    net = Network(procs, tmp_path)
    net.seeded_with_clients(2)

    procs.kill("c0")
    session = net.start(rounds=1, clients_required=2, wait_for_clients=30)
    net.combiner("c0", process="c0-restarted")
    # well before the 6 s after which a silent combiner counts as offline
    wait_until(lambda: net.active_on("c0") == 0, timeout=4, what="c0's clients inactive", procs=procs)
    done = net.finished(session, timeout=60)
    assert (done["status"], done["rounds_succeeded"]) == ("succeeded", 1), net.get("/api/v1/rounds")
    assert net.active_on("c0") == 2
