"""Restarting the reducer keeps the state and trail, and the next round builds on the latest model."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import requests

from conftest import TEST_PROJECTS, ProcessGroup, free_port, wait_for_port, wait_until
from fedtier.helpers import get_helper

helper = get_helper("numpy")


def run_session(url: str, rounds: int) -> dict:
    started = requests.post(f"{url}/start", json={"rounds": rounds, "clients_required": 2, "round_timeout": 60,
                                                  "validate": False})
    assert started.status_code == 201, started.text
    session_id = started.json()["session_id"]
    return wait_until(lambda: (s := requests.get(f"{url}/api/v1/sessions/{session_id}").json())["status"] != "running"
                      and s, what="the session to end")


def test_restart_keeps_trail_and_continues_from_latest(procs: ProcessGroup, tmp_path: Path) -> None:
    port, combiner_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"FEDTIER_DATA_DIR": str(tmp_path / "data")}
    reducer = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port), env=env)
    wait_for_port(port, proc=reducer)
    procs.start("combiner", "combiner", "--name", "c0", "--host", "127.0.0.1", "--port", str(combiner_port),
                "--reducer", url, "--heartbeat-interval", "0.3", "--heartbeat-timeout", "10", env=env)
    wait_until(lambda: requests.get(f"{url}/api/v1/combiners").json(), what="the combiner to register")
    seed = {"w": np.zeros((4, 4), dtype=np.float32)}
    reply = requests.post(f"{url}/seed", files={"seed": ("seed", io.BytesIO(helper.to_bytes(seed)))})
    assert reply.status_code == 201, reply.text
    for i in range(2):
        procs.start(f"client-{i}", "client", "--reducer", url, "--project", str(TEST_PROJECTS / "numpy_shift"),
                    "--name", f"client-{i}", "--partition", f"{i}/2", env=env)
    wait_until(lambda: requests.get(f"{url}/api/v1/status").json()["clients_active"] == 2, what="2 clients")

    first = run_session(url, rounds=1)
    assert first["status"] == "succeeded" and first["rounds_succeeded"] == 1, first
    trail_before = requests.get(f"{url}/api/v1/models").json()
    assert len(trail_before) == 2

    procs.kill("reducer")  # no goodbye: the state must already be on disk
    reducer = procs.start("reducer2", "reducer", "--host", "127.0.0.1", "--port", str(port), env=env)
    wait_for_port(port, proc=reducer)
    status = requests.get(f"{url}/api/v1/status").json()
    assert status["state"] == "idle"
    assert requests.get(f"{url}/api/v1/models").json() == trail_before
    assert requests.get(f"{url}/api/v1/sessions/{first['id']}").json()["status"] == "succeeded"
    wait_until(lambda: requests.get(f"{url}/api/v1/status").json()["clients_active"] == 2,
               what="clients seen again through the combiner")

    second = run_session(url, rounds=1)
    assert second["rounds_succeeded"] == 1, second
    trail = requests.get(f"{url}/api/v1/models").json()
    assert len(trail) == 3 and trail[:2] == trail_before
    assert trail[2]["parent_id"] == trail_before[1]["id"]
    round_doc = requests.get(f"{url}/api/v1/rounds/{second['round_ids'][0]}").json()
    assert round_doc["model_in"] == trail_before[1]["id"] and round_doc["round"] == 2
    # client i adds i+1 with weight 10(i+1): each round adds (10 + 40) / 30 to every weight
    latest = helper.from_bytes(requests.get(f"{url}/api/v1/models/{trail[2]['id']}/download").content)
    np.testing.assert_allclose(latest["w"], np.full((4, 4), 2 * 50 / 30), rtol=1e-6)

    # the reducer kept the model it committed as the next round's base; if that copy differs
    # from the trail (same size), the combiner refuses it against the trail's hash, the round
    # fails with the trail untouched, and the next round starts from the store's copy instead.
    # The kept file is the store's own by hard link (the commit takes it without copying), made
    # read-only: writing through it would damage the stored model too, which the store would
    # then report as corrupt. So the damaged copy replaces the kept name instead.
    (kept,) = (tmp_path / "data" / "reducer" / "latest").iterdir()
    assert kept.name == trail[2]["id"]
    assert kept.stat().st_mode & 0o222 == 0
    damaged = kept.with_name("damaged")
    damaged.write_bytes(bytes(b ^ 0xFF for b in kept.read_bytes()))
    damaged.replace(kept)
    third = run_session(url, rounds=1)
    assert third["rounds_failed"] == 1, third
    assert requests.get(f"{url}/api/v1/models").json() == trail
    assert not kept.exists()
    fourth = run_session(url, rounds=1)
    assert fourth["rounds_succeeded"] == 1, fourth
    latest = requests.get(f"{url}/api/v1/models").json()[-1]
    assert latest["parent_id"] == trail[2]["id"]
    final = helper.from_bytes(requests.get(f"{url}/api/v1/models/{latest['id']}/download").content)
    np.testing.assert_allclose(final["w"], np.full((4, 4), 3 * 50 / 30), rtol=1e-6)
