"""How sessions and rounds end, told truly: the two stop modes over real processes, a session
whose rounds all fail, /stop's input checks, and records of older versions read back."""
from __future__ import annotations

from pathlib import Path

import requests

from conftest import ProcessGroup
from fedtier.config import Settings
from fedtier.reducer.app import create_app
from fedtier.storage.factory import state_store_from_settings
from test_faults import Network, wait_until


def stop(net: Network, body: object) -> requests.Response:
    return requests.post(net.url + "/stop", json=body, timeout=10)


def test_stop_modes_and_outcomes(procs: ProcessGroup, tmp_path: Path) -> None:
    net = Network(procs, tmp_path)
    net.seeded_with_clients(2)

    # /stop's body is checked before anything else: a bad mode is named, with the known ones
    reply = stop(net, {"mode": "later"})
    assert reply.status_code == 400 and reply.json()["field"] == "mode", reply.text
    assert "after_round" in reply.json()["error"] and "abort" in reply.json()["error"]
    reply = stop(net, {"mode": "abort", "force": True})
    assert reply.status_code == 400 and reply.json()["field"] == "force", reply.text
    assert stop(net, ["abort"]).status_code == 400
    assert stop(net, {"mode": "abort"}).status_code == 409  # valid, but no session runs

    # after_round: the round in progress finishes and is kept; no round fails, no abort is sent
    session = net.start(rounds=5, clients_required=2, task={"sleep": 2})
    wait_until(net.training_running, what="training", procs=procs)
    reply = stop(net, {"mode": "after_round"})
    assert reply.status_code == 202 and reply.json()["mode"] == "after_round", reply.text
    done = net.finished(session)
    rounds = net.get(f"/api/v1/rounds?session_id={session}")
    assert [r["status"] for r in rounds] == ["success"], rounds
    assert (done["status"], done["rounds_succeeded"], done["rounds_failed"], done["stop_requested"]) == \
        ("stopped", 1, 0, "after_round")
    assert "stopped by the reducer" not in procs.log("c0")

    # abort: the combiners drop the round at once; it is recorded as stopped, not failed
    session = net.start(rounds=5, clients_required=2, task={"sleep": 4})
    wait_until(net.training_running, what="training", procs=procs)
    reply = stop(net, {"mode": "abort"})
    assert reply.status_code == 202 and reply.json()["mode"] == "abort", reply.text
    done = net.finished(session, timeout=30)
    rounds = net.get(f"/api/v1/rounds?session_id={session}")
    assert [r["status"] for r in rounds] == ["stopped"], rounds
    assert "aborted by the user" in rounds[0]["error"] and rounds[0]["model_out"] is None
    assert (done["status"], done["rounds_succeeded"], done["rounds_failed"], done["rounds_stopped"]) == \
        ("stopped", 0, 0, 1)
    assert rounds[0]["finished_at"] - rounds[0]["started_at"] < 4  # not waited out: the train tasks sleep 4 s

    # every round fails (more clients required than exist): the session failed, it did not "finish"
    session = net.start(rounds=2, clients_required=3, wait_for_clients=1)
    done = net.finished(session, timeout=30)
    assert (done["status"], done["rounds_succeeded"], done["rounds_failed"]) == ("failed", 0, 2), done

    # and one that runs all its rounds succeeded
    done = net.finished(net.start(rounds=1, clients_required=2), timeout=30)
    assert done["status"] == "succeeded", done


def test_old_finished_sessions_get_their_outcome(tmp_path: Path) -> None:
    """Records written before outcomes existed said "finished" whatever their rounds did."""
    settings = Settings(data_dir=tmp_path)
    store = state_store_from_settings(settings)
    for sid, ok, failed in [("all-good", 3, 0), ("some-bad", 2, 1), ("all-bad", 0, 3)]:
        store.insert("sessions", {"id": sid, "status": "finished", "rounds_requested": 3, "rounds_succeeded": ok,
                                  "rounds_failed": failed, "config": {}, "round_ids": [], "started_at": 1.0})
    store.insert("sessions", {"id": "user", "status": "stopped", "rounds_requested": 3, "rounds_succeeded": 1,
                              "rounds_failed": 0, "config": {}, "round_ids": [], "started_at": 1.0})
    store.close()
    app = create_app(settings, helper="numpy", poll_interval_s=None)
    try:
        sessions = {s["id"]: s["status"] for s in app.test_client().get("/api/v1/sessions").get_json()}
    finally:
        app.extensions["fedtier"].close()
    assert sessions == {"all-good": "succeeded", "some-bad": "failed", "all-bad": "failed", "user": "stopped"}
