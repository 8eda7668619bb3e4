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


def seed_rounds(app, sessions: dict[str, int]) -> list[dict]:
    """Round records written straight into the state store, as the control loop writes them:
    many rounds in milliseconds, without running them."""
    state = app.extensions["fedtier"].state
    docs, seq, t = [], 0, 1_700_000_000.0
    for session_id, count in sessions.items():
        ids = []
        for i in range(count):
            seq += 1
            t += 10
            doc = {"id": f"r{seq:04d}", "session_id": session_id, "round": seq, "seq": seq, "status": "success",
                   "started_at": t, "finished_at": t + 5, "timings": {"total": 5.0, "training": 3.0},
                   "metrics": {"accuracy": 0.5 + seq / 1000, "loss": 2.0 - seq / 100}, "participants": ["c0"],
                   "error": None}
            state.insert("rounds", doc)
            docs.append(doc)
            ids.append(doc["id"])
        state.insert("sessions", {"id": session_id, "status": "succeeded", "rounds_requested": count,
                                  "rounds_succeeded": count, "rounds_failed": 0, "round_ids": ids,
                                  "started_at": t - 10 * count, "finished_at": t, "config": {}})
    return docs


def test_rounds_page_reaches_every_round_and_polls_only_new_ones(app, api: FlaskClient) -> None:
    """Issue 18: a chart asks for the range it shows, older than the latest 50 too, and a poll
    asks only for what is new; the headers say where the page sits."""
    docs = seed_rounds(app, {"s-a": 70, "s-b": 50})
    latest = api.get("/api/v1/rounds?last=50")
    assert [r["seq"] for r in latest.json] == list(range(71, 121))
    assert (latest.headers["X-Total-Count"], latest.headers["X-Offset"]) == ("120", "70")
    oldest = api.get("/api/v1/rounds?offset=0&limit=10")
    assert [r["id"] for r in oldest.json] == [d["id"] for d in docs[:10]]  # older than the latest 50
    assert [r["seq"] for r in api.get("/api/v1/rounds?offset=118").json] == [119, 120]  # a poll: only new rounds
    assert api.get("/api/v1/rounds?offset=120").json == []
    one = api.get("/api/v1/rounds?session_id=s-b&offset=10&limit=5")
    assert [r["seq"] for r in one.json] == [81, 82, 83, 84, 85] and one.headers["X-Total-Count"] == "50"
    assert [r["seq"] for r in api.get("/api/v1/rounds?session_id=s-a&last=3").json] == [68, 69, 70]
    assert len(api.get("/api/v1/rounds").json) == 120  # without paging: the whole list, as before
    assert len(api.get("/api/v1/rounds?last=1000").json) == 120


@pytest.mark.parametrize("query, field", [
    ("offset=-1", "offset"), ("offset=x", "offset"), ("offset=1.5", "offset"), ("offset=" + "9" * 30, "offset"),
    ("last=0", "last"), ("last=1001", "last"), ("last=%C2%B2", "last"), ("offset=0&last=5", "last"),
    ("offset=0&limit=1001", "limit"), ("last=5&limit=0", "limit")])
def test_rounds_page_parameters_refuse_bad_values_naming_the_field(api: FlaskClient, query: str, field: str) -> None:
    for path in ("/api/v1/rounds", "/api/v1/rounds.csv"):
        reply = api.get(f"{path}?{query}")
        assert reply.status_code == 400 and reply.json["field"] == field, (path, query, reply.json)


def test_rounds_csv_matches_the_api_and_cannot_run_formulas(app, api: FlaskClient) -> None:
    """CSV export: the rows are the API's rounds; metric names and texts from outside parties
    that a spreadsheet would run as a formula are neutralised, negative numbers are not."""
    import csv

    docs = seed_rounds(app, {"s-a": 3, "s-b": 60})
    state = app.extensions["fedtier"].state
    state.update("rounds", "r0063", {"metrics": {"=HYPERLINK(\"http://x\")": 1.0, "loss": -0.25},
                                     "error": "@SUM(A1)", "status": "failed"})
    reply = api.get("/api/v1/rounds.csv?session_id=s-b&last=55")
    assert reply.status_code == 200 and reply.mimetype == "text/csv"
    assert reply.headers["X-Offset"] == "5" and "attachment" in reply.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(reply.get_data(as_text=True))))
    expected = api.get("/api/v1/rounds?session_id=s-b&last=55").json
    assert [r["seq"] for r in rows] == [str(d["seq"]) for d in expected] == [str(s) for s in range(9, 64)]
    assert [r["session_round"] for r in rows] == [str(i) for i in range(6, 61)]
    for row, doc in zip(rows[:-1], expected[:-1]):
        assert float(row["accuracy"]) == doc["metrics"]["accuracy"] and float(row["loss"]) == doc["metrics"]["loss"]
    last = rows[-1]
    assert "'=HYPERLINK(\"http://x\")" in last and last["'=HYPERLINK(\"http://x\")"] == "1.0"
    assert last["loss"] == "-0.25" and last["error"] == "'@SUM(A1)" and last["model_round"] == ""
    assert not any(k.startswith(("=", "+", "-", "@")) for k in rows[0])
    assert len(docs) == 63


def test_a_summary_round_is_the_same_size_at_a_thousand_clients(app, api: FlaskClient) -> None:
    """What the dashboard polls (view=summary, status.last_round) carries counts, not a list
    per client: the full record of a 1,000-client round is hundreds of KB, its summary is not."""
    state = app.extensions["fedtier"].state
    names = [f"client-{i:04d}" for i in range(1000)]
    update = {"num_examples": 10, "weight_used": 10, "capped": False, "timings": {"train": 1.0}}
    state.insert("rounds", {
        "id": "big", "session_id": "s", "round": 1, "seq": 1, "status": "success", "model_in": "m0",
        "started_at": 1.0, "finished_at": 2.0, "timings": {"total": 1.0}, "metrics": {"accuracy": 0.9},
        "participants": names, "capped": [],
        "combiners": [{"name": f"c{k}", "success": True, "num_examples": 5000, "failures": [],
                       "updates": [{"client": n, **update} for n in names[k::2]],
                       "clients": [{"client": n, "state": "reported"} for n in names[k::2]]} for k in (0, 1)]})
    full = api.get("/api/v1/rounds?offset=0")
    summary = api.get("/api/v1/rounds?offset=0&view=summary")
    status = api.get("/api/v1/status").json["last_round"]
    assert len(full.data) > 100_000 and len(summary.data) < 2_000, (len(full.data), len(summary.data))
    (one,) = summary.json
    assert one == status and one["participants_count"] == 1000 and "participants" not in one
    assert [(c["name"], c["updates_count"], c["clients_count"]) for c in one["combiners"]] == [("c0", 500, 500),
                                                                                              ("c1", 500, 500)]
    assert one["metrics"] == {"accuracy": 0.9} and one["timings"] == {"total": 1.0}
    bad = api.get("/api/v1/rounds?view=compact")
    assert bad.status_code == 400 and bad.json["field"] == "view"
