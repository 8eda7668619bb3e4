"""Continuous training and the model lifecycle (issue 17): schedules and the production model.

The API's checks and the scheduler's rules (skip, coalesce missed firings, bounds) run in
process; the firing itself runs over real processes: a reducer, a combiner and two
clients, where schedules start real sessions, a reducer restart keeps schedules and the
production model, and a new compute package starts an ``on_package`` schedule's session.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import ProcessGroup
from fedtier.config import Settings
from fedtier.helpers import get_helper
from fedtier.identity import generate_keypair, issue, load_signing_key
from fedtier.limits import Limits
from fedtier.package import pack
from fedtier.reducer.app import create_app
from test_faults import SHIFT, Network, wait_until

ADMIN = "lifecycle-admin-token"
# what every schedule of the network test runs: one quick round on both clients
SETTINGS = {"rounds": 1, "clients_required": 2, "validate": False, "round_timeout": 60, "wait_for_clients": 30}


def _app(tmp_path: Path, **settings):
    return create_app(Settings(data_dir=tmp_path, schedule_min_seconds=1, **settings), poll_interval_s=None)


def _seed_bytes() -> bytes:
    return get_helper("numpy").to_bytes({"w": np.zeros((3, 3), np.float32)})


# ---------------------------------------------------------------- the API's checks, in process
@pytest.mark.parametrize("settings", [{"rounds": 0}, {"rounds": "many"}, {"aggregator": "nope"}, {"bogus": 1},
                                      {"task": "not an object"}, {"clients_required": -1},
                                      {"aggregator_kwargs": {"nope": 1}}])
def test_bad_session_settings_get_the_same_400_as_start(tmp_path: Path, settings: dict) -> None:
    """One rule: a schedule's settings are a /start body, refused with /start's message, the
    field named under ``settings.``; nothing is stored."""
    app = _app(tmp_path)
    client = app.test_client()
    try:
        start = client.post("/start", json=settings)
        made = client.post("/api/v1/schedules", json={"name": "n", "every_seconds": 60, "settings": settings})
        assert start.status_code == made.status_code == 400, (start.json, made.json)
        assert made.json["field"] == f"settings.{start.json['field']}"
        assert made.json["error"] == f"settings.{start.json['error']}"
        assert client.get("/api/v1/schedules").json == []
    finally:
        app.extensions["fedtier"].close()


@pytest.mark.parametrize("body, field", [
    ({"every_seconds": 60}, "name"),
    ({"name": "", "every_seconds": 60}, "name"),
    ({"name": "x" * 101, "every_seconds": 60}, "name"),
    ({"name": "a\nb", "every_seconds": 60}, "name"),
    ({"name": "n"}, "every_seconds"),  # no trigger at all
    ({"name": "n", "every_seconds": 0}, "every_seconds"),
    ({"name": "n", "every_seconds": 2}, "every_seconds"),  # under FEDTIER_SCHEDULE_MIN_SECONDS (5 here)
    ({"name": "n", "every_seconds": 10 ** 12}, "every_seconds"),
    ({"name": "n", "every_seconds": 1.5}, "every_seconds"),
    ({"name": "n", "cron": "not cron"}, "cron"),
    ({"name": "n", "cron": "* * * * * *"}, "cron"),  # a sixth field is seconds: refused
    ({"name": "n", "cron": "0 0 31 2 *"}, "cron"),  # never fires
    ({"name": "n", "on_package": "yes"}, "on_package"),
    ({"name": "n", "on_package": True, "settings": [1]}, "settings"),
    ({"name": "n", "on_package": True, "when": "now"}, "when"),
])
def test_bad_schedules_are_refused_naming_the_field(tmp_path: Path, body: dict, field: str) -> None:
    app = create_app(Settings(data_dir=tmp_path, schedule_min_seconds=5), poll_interval_s=None)
    client = app.test_client()
    try:
        reply = client.post("/api/v1/schedules", json=body)
        assert reply.status_code == 400 and reply.json["field"] == field, reply.json
        if body.get("every_seconds") == 2:
            assert "FEDTIER_SCHEDULE_MIN_SECONDS" in reply.json["error"]
        assert client.get("/api/v1/schedules").json == []
    finally:
        app.extensions["fedtier"].close()


def test_a_cron_firing_more_often_than_the_bound_is_refused(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, schedule_min_seconds=120), poll_interval_s=None)
    client = app.test_client()
    try:
        every_minute = client.post("/api/v1/schedules", json={"name": "n", "cron": "* * * * *"})
        assert every_minute.status_code == 400 and every_minute.json["field"] == "cron"
        assert "FEDTIER_SCHEDULE_MIN_SECONDS" in every_minute.json["error"]
        hourly = client.post("/api/v1/schedules", json={"name": "n", "cron": "5 * * * *"})
        assert hourly.status_code == 201 and hourly.json["schedule"]["next_at"] > time.time()
    finally:
        app.extensions["fedtier"].close()


def test_the_number_of_schedules_is_bounded(tmp_path: Path) -> None:
    app = _app(tmp_path, limits=Limits(schedules=2))
    client = app.test_client()
    try:
        for i in range(2):
            assert client.post("/api/v1/schedules", json={"name": f"s{i}", "on_package": True}).status_code == 201
        third = client.post("/api/v1/schedules", json={"name": "s2", "on_package": True})
        assert third.status_code == 409 and third.json["limit"] == "FEDTIER_MAX_SCHEDULES"
        assert len(client.get("/api/v1/schedules").json) == 2
        client.delete(f"/api/v1/schedules/{client.get('/api/v1/schedules').json[0]['id']}")
        assert client.post("/api/v1/schedules", json={"name": "s2", "on_package": True}).status_code == 201
    finally:
        app.extensions["fedtier"].close()


def test_missed_firings_coalesce_into_one_and_a_busy_or_unseeded_reducer_skips(tmp_path: Path) -> None:
    """A timer due many periods ago fires once, not once per period; the reducer cannot
    start a session (no seed here), so the firing is recorded as skipped, with why."""
    app = _app(tmp_path)
    r = app.extensions["fedtier"]
    try:
        made = app.test_client().post("/api/v1/schedules", json={"name": "n", "every_seconds": 5})
        schedule = made.json["schedule"]
        later = schedule["created_at"] + 1000  # 200 periods missed
        r.scheduler.tick(later)
        after = r.scheduler.get(schedule["id"])
        assert (after["skipped"], after["fired"], after["last_outcome"]) == (1, 0, "skipped")
        assert "seed the network first" in after["last_error"]
        assert after["next_at"] == pytest.approx(later + 5)
        r.scheduler.tick(later + 1)  # not due again yet
        assert r.scheduler.get(schedule["id"])["skipped"] == 1
    finally:
        r.close()


def test_promotion_history_is_kept_in_order_and_production_served(tmp_path: Path) -> None:
    app = _app(tmp_path)
    client = app.test_client()
    try:
        assert client.get("/api/v1/models/production").status_code == 404
        assert client.get("/api/v1/models/production/download").status_code == 404
        assert client.get("/api/v1/status").json["production_model"] is None
        assert client.post("/api/v1/models/nope/promote", json={}).status_code == 404
        assert client.post("/seed", data={"seed": (io.BytesIO(_seed_bytes()), "seed")}).status_code == 201
        seed = client.get("/api/v1/models").json[0]
        r = app.extensions["fedtier"]
        other = r.trail.commit(_write(tmp_path / "m.safetensors", _seed_bytes()), parent_id=seed["id"], round_number=1)
        long_note = client.post(f"/api/v1/models/{seed['id']}/promote", json={"note": "x" * 1001})
        assert long_note.status_code == 400 and long_note.json["field"] == "note"
        assert client.post(f"/api/v1/models/{seed['id']}/promote", json={"why": 1}).json["field"] == "why"
        assert client.get("/api/v1/promotions").json == []  # refused requests changed nothing
        for model_id, note in ((seed["id"], "first"), (other["id"], "better"), (seed["id"], "rolled back")):
            reply = client.post(f"/api/v1/models/{model_id}/promote", json={"note": note})
            assert reply.status_code == 201 and reply.json["model"]["id"] == model_id
        history = client.get("/api/v1/promotions").json
        assert [(p["model_id"], p["note"]) for p in history] == [
            (seed["id"], "first"), (other["id"], "better"), (seed["id"], "rolled back")]
        production = client.get("/api/v1/models/production").json
        assert production["id"] == seed["id"] and production["promotion"]["note"] == "rolled back"
        assert production["promotion"]["promoted_by"] == "anyone (identities not checked)"
        data = client.get("/api/v1/models/production/download")
        assert data.status_code == 200 and data.headers["X-Model-SHA256"] == seed["sha256"]
        assert client.get("/api/v1/status").json["production_model"]["id"] == seed["id"]
    finally:
        app.extensions["fedtier"].close()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_only_the_admin_writes_schedules_and_promotions(tmp_path: Path) -> None:
    signing, verify = generate_keypair(tmp_path / "keys")
    key = load_signing_key(signing)
    app = _app(tmp_path / "data", admin_auth_token=ADMIN, token_verify_key=str(verify),
               token_signing_key=str(signing))
    client = app.test_client()
    admin = {"Authorization": f"Token {ADMIN}"}
    try:
        seeded = client.post("/seed", data={"seed": (io.BytesIO(_seed_bytes()), "seed")}, headers=admin)
        assert seeded.status_code == 201
        model = client.get("/api/v1/models").json[0]["id"]
        made = client.post("/api/v1/schedules", json={"name": "n", "on_package": True}, headers=admin)
        assert made.status_code == 201 and made.json["schedule"]["created_by"] == "admin (token)"
        sid = made.json["schedule"]["id"]
        others = {"none": {}, "wrong": {"Authorization": "Token nope"},
                  "client": {"Authorization": f"Token {issue(key, 'client', 'c', 600)}"},
                  "combiner": {"Authorization": f"Token {issue(key, 'combiner', 'k', 600)}"}}
        for who, headers in others.items():
            for method, path, body in (("POST", "/api/v1/schedules", {"name": "m", "on_package": True}),
                                       ("POST", f"/api/v1/schedules/{sid}/pause", None),
                                       ("POST", f"/api/v1/schedules/{sid}/resume", None),
                                       ("DELETE", f"/api/v1/schedules/{sid}", None),
                                       ("POST", f"/api/v1/models/{model}/promote", {})):
                reply = client.open(path, method=method, json=body, headers=headers)
                assert reply.status_code == 401, (who, method, path, reply.status_code)
        assert [s["state"] for s in client.get("/api/v1/schedules").json] == ["active"]  # nothing changed
        assert client.get("/api/v1/promotions").json == []
        promoted = client.post(f"/api/v1/models/{model}/promote", headers=admin)
        assert promoted.status_code == 201 and promoted.json["promotion"]["promoted_by"] == "admin (token)"
    finally:
        app.extensions["fedtier"].close()


# ---------------------------------------------------------------- firing, over real processes
def _schedule(net: Network, sid: str) -> dict:
    return net.get(f"/api/v1/schedules/{sid}")


def _sessions_of(net: Network, sid: str) -> list[dict]:
    return [s for s in net.get("/api/v1/sessions") if s.get("schedule_id") == sid]


def _idle(net: Network) -> bool:
    return net.get("/api/v1/status")["state"] == "idle"


def test_schedules_fire_skip_pause_and_survive_a_restart(procs: ProcessGroup, tmp_path: Path) -> None:
    net = Network(procs, tmp_path)
    net.env["FEDTIER_SCHEDULE_MIN_SECONDS"] = "1"
    net.reducer()
    net.combiner("c0")
    for i in range(2):
        net.client(i, 2)
    wait_until(lambda: len(net.get("/api/v1/combiners")) == 1, what="c0 registered", procs=procs)
    net.seed()
    wait_until(lambda: net.active_on("c0") == 2, what="both clients active", procs=procs)
    post = lambda path, **kw: requests.post(net.url + path, timeout=10, **kw)  # noqa: E731

    # an interval schedule fires and its session runs, through the path /start takes
    timer = post("/api/v1/schedules", json={"name": "every-2s", "every_seconds": 2, "settings": SETTINGS})
    assert timer.status_code == 201, timer.text
    tid = timer.json()["schedule"]["id"]
    wait_until(lambda: any(s["status"] == "succeeded" for s in _sessions_of(net, tid)), timeout=30,
               what="a scheduled session to succeed", procs=procs)
    assert _schedule(net, tid)["last_outcome"] == "started"

    # paused, it fires no more
    assert post(f"/api/v1/schedules/{tid}/pause").json()["schedule"]["state"] == "paused"
    wait_until(lambda: _idle(net), what="the reducer idle", procs=procs)
    fired = _schedule(net, tid)["fired"]
    time.sleep(3.0)  # over a period and several ticks
    assert _schedule(net, tid)["fired"] == fired and len(_sessions_of(net, tid)) == fired

    # due while a session runs: skipped and recorded, never a second session; then it fires again
    manual = net.start(rounds=1, clients_required=2, task={"sleep": 3.5})
    assert post(f"/api/v1/schedules/{tid}/resume").json()["schedule"]["state"] == "active"
    skipped = wait_until(lambda: (s := _schedule(net, tid))["skipped"] > 0 and s, timeout=15,
                         what="a skipped firing", procs=procs)
    assert skipped["last_outcome"] == "skipped" and "a session is running" in skipped["last_error"]
    assert net.finished(manual)["status"] == "succeeded"
    wait_until(lambda: _schedule(net, tid)["fired"] > fired, timeout=20, what="resumed firing", procs=procs)
    post(f"/api/v1/schedules/{tid}/pause")
    wait_until(lambda: _idle(net), what="the reducer idle", procs=procs)

    # a new compute package starts an on_package schedule's session
    on_package = post("/api/v1/schedules", json={"name": "on-package", "on_package": True, "settings": SETTINGS})
    pid = on_package.json()["schedule"]["id"]
    assert on_package.json()["schedule"]["next_at"] is None and _sessions_of(net, pid) == []
    assert post("/package", files={"package": ("p.tgz", pack(SHIFT))}).status_code == 201
    started = _schedule(net, pid)
    assert started["last_outcome"] == "started" and started["fired"] == 1
    assert net.finished(started["last_session_id"])["schedule_id"] == pid

    # promote, then kill the reducer and start it again on the same data directory
    latest = net.get("/api/v1/status")["latest_model"]["id"]
    assert post(f"/api/v1/models/{latest}/promote", json={"note": "nightly"}).status_code == 201
    before = {"schedules": net.get("/api/v1/schedules"), "promotions": net.get("/api/v1/promotions")}
    procs.kill("reducer")
    net.reducer("reducer-2")
    assert net.get("/api/v1/schedules") == before["schedules"]  # the paused one still paused
    assert net.get("/api/v1/promotions") == before["promotions"]
    production = net.get("/api/v1/models/production")
    assert production["id"] == latest and production["promotion"]["note"] == "nightly"
    assert requests.get(net.url + "/api/v1/models/production/download", timeout=10).headers["X-Model-SHA256"] == \
        production["sha256"]
    # the restarted reducer's scheduler fires the stored schedule once resumed
    fired = _schedule(net, tid)["fired"]
    post(f"/api/v1/schedules/{tid}/resume")
    wait_until(lambda: _schedule(net, tid)["fired"] > fired, timeout=30, what="firing after the restart",
               procs=procs)
    post(f"/api/v1/schedules/{tid}/pause")
    assert requests.delete(f"{net.url}/api/v1/schedules/{pid}", timeout=10).status_code == 200
    assert [s["id"] for s in net.get("/api/v1/schedules")] == [tid]
