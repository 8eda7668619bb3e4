"""The reducer's REST API in-process: states, validation of input, discovery, the trail."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from fedtier.config import Settings
from fedtier.helpers import get_helper
from fedtier.reducer.app import create_app


@pytest.fixture
def app(tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    yield app
    app.extensions["fedtier"].close()


@pytest.fixture
def api(app) -> FlaskClient:
    return app.test_client()


def seed_bytes() -> bytes:
    return get_helper("numpy").to_bytes({"w": np.ones((2, 3), dtype=np.float32)})


def post_seed(api: FlaskClient, data: bytes):
    return api.post("/seed", data={"seed": (io.BytesIO(data), "seed.safetensors")},
                    content_type="multipart/form-data")


def test_seed_rejects_invalid_model_and_stays_in_setup(api: FlaskClient) -> None:
    for bad in (b"not a model at all", seed_bytes()[:-3], b"\xff" * 64):
        reply = post_seed(api, bad)
        assert reply.status_code == 400, reply.json
        assert "not a valid model" in reply.json["error"]
    assert post_seed(api, b"").status_code == 400
    missing = api.post("/seed", data={}, content_type="multipart/form-data")
    assert missing.status_code == 400 and missing.json["field"] == "seed"
    assert api.get("/api/v1/status").json["state"] == "setup"
    assert api.get("/api/v1/models").json == []


def test_seed_commits_first_model_once(api: FlaskClient) -> None:
    data = seed_bytes()
    reply = post_seed(api, data)
    assert reply.status_code == 201
    model = reply.json["model"]
    assert model["parent_id"] is None and model["sha256"] == hashlib.sha256(data).hexdigest()
    assert api.get("/api/v1/status").json["state"] == "idle"
    again = post_seed(api, data)
    assert again.status_code == 409 and again.json["state"] == "idle"
    download = api.get(f"/api/v1/models/{model['id']}/download")
    assert download.status_code == 200 and download.data == data
    assert download.headers["X-Model-SHA256"] == model["sha256"]


def test_start_needs_seed_and_valid_parameters(api: FlaskClient) -> None:
    reply = api.post("/start", json={"rounds": 1})
    assert reply.status_code == 409 and "setup" in reply.json["error"]
    assert post_seed(api, seed_bytes()).status_code == 201
    cases = [({"rounds": 0}, "rounds"), ({"rounds": "many"}, "rounds"), ({"rounds": 1.5}, "rounds"),
             ({"clients_required": "x"}, "clients_required"), ({"clients_required": 0}, "clients_required"),
             ({"round_timeout": -1}, "round_timeout"), ({"round_timeout": "nan"}, "round_timeout"),
             ({"validate": "maybe"}, "validate"), ({"task": "[1, 2]"}, "task"), ({"rounds_": 2}, "rounds_"),
             ({"clients_required": 3, "clients_requested": 2}, "clients_requested")]
    for body, field in cases:
        reply = api.post("/start", json=body)
        assert reply.status_code == 400, (body, reply.json)
        assert reply.json["field"] == field, (body, reply.json)
    assert api.post("/start", data="[1]", content_type="application/json").status_code == 400
    form = api.post("/start", data={"rounds": "x"})  # the HTML form path names the field too
    assert form.status_code == 400 and form.json["field"] == "rounds"
    assert api.get("/api/v1/status").json["state"] == "idle"
    assert api.get("/api/v1/sessions").json == []


def test_add_and_assign_balance_clients_and_reassign_when_offline(app, api: FlaskClient) -> None:
    assert api.get("/assign?name=c0").status_code == 503
    assert api.post("/add", json={"name": "a", "address": "127.0.0.1", "port": 0}).json["field"] == "port"
    assert api.post("/add", json={"name": "../x", "address": "h", "port": 1}).json["field"] == "name"
    for name in ("comb-a", "comb-b"):
        assert api.post("/add", json={"name": name, "address": "127.0.0.1", "port": 1}).status_code == 201
    assigned = [api.get(f"/assign?name=client-{i}").json["combiner"] for i in range(4)]
    assert sorted(assigned) == ["comb-a", "comb-a", "comb-b", "comb-b"]
    assert api.get("/assign?name=client-0").json["combiner"] == assigned[0]  # stays put
    # its combiner goes offline: the client is moved to the other one
    app.extensions["fedtier"].state.update("combiners", assigned[0], {"online": False})
    other = {"comb-a": "comb-b", "comb-b": "comb-a"}[assigned[0]]
    assert api.get("/assign?name=client-0").json["combiner"] == other
    assert api.get("/assign").status_code == 400


def test_unknown_ids_are_json_404(api: FlaskClient) -> None:
    for path in ("/api/v1/models/nope", "/api/v1/sessions/nope", "/api/v1/rounds/nope",
                 "/api/v1/models/nope/download", "/api/v1/nothing-here"):
        reply = api.get(path)
        assert reply.status_code == 404 and reply.is_json and reply.json["error"], path


def test_pages_render(api: FlaskClient) -> None:
    for path in ("/", "/plot", "/seed", "/start"):
        reply = api.get(path)
        assert reply.status_code == 200 and b"Reducer state" in reply.data, path


def test_clients_summary_counts_by_state_and_combiner(app, api: FlaskClient) -> None:
    """Issue 18 (scale): pages ask for counts, not every client."""
    state = app.extensions["fedtier"].state
    for i in range(5):
        state.upsert("clients", f"c{i}", {"name": f"c{i}", "combiner": "comb-a" if i < 3 else "comb-b",
                                           "active": i % 2 == 0})
    body = api.get("/api/v1/clients/summary").json
    assert (body["total"], body["active"], body["inactive"]) == (5, 3, 2)
    assert body["by_combiner"] == {"comb-a": {"active": 2, "inactive": 1}, "comb-b": {"active": 1, "inactive": 1}}
