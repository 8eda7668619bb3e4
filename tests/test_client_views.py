"""Clients at the scale of the lab (issue 18): each client's history, search and pages of clients,
the trail polled for what is new, in-process against the reducer's API and pages.

Records go straight into the state store (a thousand clients, rounds of history): what is tested
is what the reducer serves from them. tests/test_ui.py follows a real round into a client's
history; tests/test_ui_truth.py measures the network page in Chromium against a budget.
"""
from __future__ import annotations

import json
import re
import time
from typing import Iterator

import pytest

from fedtier.config import Settings
from fedtier.limits import Limits
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer import participation
from fedtier.reducer.app import create_app
from fedtier.storage.collections import CLIENT_ROUNDS, CLIENTS, COMBINERS, MODELS

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def fill_network(state, clients: int = 1000, combiners: int = 4, offline: str | None = "c3") -> None:
    """``clients`` clients over ``combiners`` combiners, every third inactive; ``offline``
    unreachable at its address since a known time."""
    now = time.time()
    for i in range(combiners):
        name = f"c{i}"
        down = name == offline
        state.upsert(COMBINERS, name, {"name": name, "address": f"10.0.0.{i}", "port": 12080, "online": not down,
                                       "last_seen": now - (120 if down else 1), "active_clients": 0,
                                       **({"unreachable_since": 1_700_000_000.0,
                                           "last_error": "UNAVAILABLE: connection refused"} if down else {})})
    state.insert_new(CLIENTS, [{"id": f"client-{i:04d}", "name": f"client-{i:04d}", "combiner": f"c{i % combiners}",
                                "active": i % 3 != 0 and f"c{i % combiners}" != offline,
                                "last_heartbeat": now - (i % 50), "rounds_joined": i % 7}
                               for i in range(clients)])


def fill_history(state, client: str, rounds: int) -> None:
    state.insert_new(CLIENT_ROUNDS, [{
        "id": f"r{seq}.{client}", "client": client, "combiner": "c0", "round_id": f"r{seq}", "seq": seq,
        "round": seq, "session_id": "s", "round_status": "success", "outcome": "failed" if seq % 5 == 0 else "reported",
        "error": "no answer before the round closed" if seq % 5 == 0 else None, "capped": seq % 4 == 0,
        "num_examples": 100, "weight_used": 80 if seq % 4 == 0 else 100,
        "train_metrics": {"train_loss": 1.0 / seq}, "validation": {"accuracy": 0.5 + seq / 1000, "loss": 2.0 / seq},
        "metrics_dropped": 0, "timings": {}, "created_at": 0.0} for seq in range(1, rounds + 1)])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("clients")), helper="numpy", poll_interval_s=None)
    state = app.extensions["fedtier"].state
    fill_network(state)
    fill_history(state, "client-0001", 120)
    state.insert_new(MODELS, [{"id": f"m{i:03d}", "parent_id": f"m{i - 1:03d}" if i else None, "round": i,
                               "kind": "global" if i else "seed", "sha256": "0" * 64, "size": 1,
                               "created_at": float(i)} for i in range(300)])
    yield app
    app.extensions["fedtier"].close()


# ---------------------------------------------------------------- what a round records
def test_a_round_records_each_clients_part_bounded() -> None:
    """From what combiners answer: reported with its train metrics, failed with the reason, its
    validation beside; a report's metrics held to the count and name bounds, the rest counted."""
    bounds = Limits(report_metrics=3, metric_name_chars=8)
    metrics, dropped = participation.kept_metrics(
        {"num_examples": 5, "loss": 0.5, "acc": 1, "flag": True, "note": "text", "a_long_name": 1.0, "x": 2.0,
         "y": 3.0, "z": 4.0}, bounds)
    assert metrics == {"loss": 0.5, "acc": 1.0, "x": 2.0} and dropped == 3  # the long name, y and z
    assert participation.kept_metrics({"big": 10**400, "inf": float("inf"), "ok": 1}) == ({"ok": 1.0}, 2)
    ok = pb.RoundResult(success=True, failures=["b: no answer before the round closed"], updates=[
        pb.ClientContribution(client_name="a", num_examples=10, weight_used=8, capped=True,
                              metadata_json=json.dumps({"num_examples": 10, "train_loss": 0.25}),
                              timings={"train": 1.5})])
    bad_metadata = pb.RoundResult(success=False, updates=[pb.ClientContribution(
        client_name="c", num_examples=3, weight_used=3, metadata_json="[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]")])
    entries = participation.from_training({"c0": ok, "c1": bad_metadata})
    assert entries["a"]["outcome"] == "reported" and entries["a"]["capped"] is True
    assert entries["a"]["train_metrics"] == {"train_loss": 0.25} and entries["a"]["weight_used"] == 8
    assert entries["b"]["outcome"] == "failed" and entries["b"]["error"] == "no answer before the round closed"
    assert entries["c"]["train_metrics"] == {} and entries["c"]["combiner_ok"] is False
    participation.add_validation(entries, "c0", pb.ValidationReport(client_name="a", num_examples=4), {"accuracy": 0.9})
    participation.add_validation(entries, "c0", pb.ValidationReport(client_name="d", num_examples=4), {"accuracy": 0.7})
    assert entries["a"]["validation"] == {"accuracy": 0.9} and entries["d"]["outcome"] == "validated"


# ---------------------------------------------------------------- a client's history
def test_history_pages_newest_first_and_bounds_its_input(app) -> None:
    web = app.test_client()
    first = web.get("/api/v1/clients/client-0001/history?limit=50").get_json()
    seqs = [r["seq"] for r in first["records"]]
    assert seqs == list(range(120, 70, -1)) and first["next_before"] == 71
    assert first["info"]["combiner"] == "c1" and first["info"]["name"] == "client-0001"
    second = web.get(f"/api/v1/clients/client-0001/history?limit=50&before={first['next_before']}").get_json()
    last = web.get(f"/api/v1/clients/client-0001/history?limit=50&before={second['next_before']}").get_json()
    assert [r["seq"] for r in second["records"] + last["records"]] == list(range(70, 0, -1))
    assert last["next_before"] is None
    assert [r["seq"] for r in web.get("/api/v1/clients/client-0001/history?after=117").get_json()["records"]] == \
        [120, 119, 118]  # a page polls for what is new
    assert len(web.get("/api/v1/clients/client-0001/history").get_json()["records"]) == participation.HISTORY_PAGE
    # no history yet, and no such client
    assert web.get("/api/v1/clients/client-0002/history").get_json()["records"] == []
    assert web.get("/api/v1/clients/nobody/history").status_code == 404
    for query, field in (("limit=0", "limit"), (f"limit={participation.MAX_HISTORY_PAGE + 1}", "limit"),
                         ("limit=x", "limit"), ("before=-1", "before"), ("after=1.5", "after")):
        reply = web.get(f"/api/v1/clients/client-0001/history?{query}")
        assert reply.status_code == 400 and reply.get_json()["field"] == field, query
    reply = web.get("/api/v1/clients/bad%20name/history")
    assert reply.status_code == 400 and reply.get_json()["field"] == "name"


def test_client_page_shows_history_without_javascript(app) -> None:
    web = app.test_client()
    page = web.get("/clients/client-0001", headers=BROWSER).get_data(as_text=True)
    rows = re.findall(r'<tr data-seq="(\d+)" data-outcome="(\w+)"', page)
    assert [int(s) for s, _ in rows] == list(range(120, 70, -1))
    assert dict(rows)["115"] == "failed" and "no answer before the round closed" in page
    assert "data-capped" in page and "train_loss 0.008333" in page and "accuracy 0.62" in page
    older = re.search(r'href="(/clients/client-0001\?before=\d+)"', page)
    assert older, "no link to older rounds"
    page2 = web.get(older.group(1), headers=BROWSER).get_data(as_text=True)
    assert re.findall(r'<tr data-seq="(\d+)"', page2)[0] == "70" and 'data-page="newest"' in page2
    # a client whose combiner is offline says so
    assert "its combiner c3 is offline" in web.get("/clients/client-0003", headers=BROWSER).get_data(as_text=True)
    missing = web.get("/clients/nobody", headers=BROWSER)
    assert missing.status_code == 404 and missing.mimetype == "text/html"


# ---------------------------------------------------------------- search and pages of clients
def test_clients_search_and_pages(app) -> None:
    web = app.test_client()
    everyone = web.get("/api/v1/clients")
    assert len(everyone.get_json()) == 1000 and everyone.headers["X-Total-Count"] == "1000"  # as before
    page = web.get("/api/v1/clients?limit=50&offset=100")
    assert [c["name"] for c in page.get_json()] == [f"client-{i:04d}" for i in range(100, 150)]
    assert page.headers["X-Total-Count"] == "1000"
    found = web.get("/api/v1/clients?q=CLIENT-09&state=active&combiner=c1&limit=1000")
    names = [c["name"] for c in found.get_json()]
    assert names and all(n.startswith("client-09") for n in names)
    assert all(c["active"] and c["combiner"] == "c1" for c in found.get_json())
    assert found.headers["X-Total-Count"] == str(len(names))
    inactive = web.get("/api/v1/clients?state=inactive&limit=1").get_json()[0]
    assert inactive["why"], inactive  # every inactive client says why
    for query, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"),
                         ("state=busy", "state"), ("q=" + "x" * 129, "q"), ("combiner=%00", "combiner")):
        reply = web.get(f"/api/v1/clients?{query}")
        assert reply.status_code == 400 and reply.get_json()["field"] == field, query
    brief = web.get("/api/v1/status?brief=true").get_json()
    assert brief["clients"] == 1000 and "last_round" not in brief and "session" not in brief
    assert "last_round" in web.get("/api/v1/status").get_json()  # as before, for the dashboard
    assert web.get("/api/v1/status?brief=1").get_json()["field"] == "brief"
    combiner = next(c for c in web.get("/api/v1/combiners").get_json() if c["name"] == "c3")
    assert combiner["why"].startswith("unreachable at 10.0.0.3:12080 since 2023-11-14 22:13:20 UTC")


def test_network_page_lists_one_page_with_counts(app) -> None:
    web = app.test_client()
    page = web.get("/network", headers=BROWSER).get_data(as_text=True)
    assert page.count("data-client=") == 50 and "1–50 of 1000" in page
    assert "/network?offset=50&amp;limit=50" in page  # the next page, without JavaScript
    assert re.search(r'data-combiner="c3" data-online="false">.*?unreachable at 10\.0\.0\.3:12080', page, re.S)
    searched = web.get("/network?q=client-099&state=inactive", headers=BROWSER).get_data(as_text=True)
    shown = re.findall(r'data-client="([^"]+)"', searched)
    assert shown and all(n.startswith("client-099") for n in shown)
    assert 'value="client-099"' in searched and '<option value="inactive" selected>' in searched
    assert web.get("/network?offset=x", headers=BROWSER).status_code == 400


# ---------------------------------------------------------------- the trail, polled for what is new
def test_models_come_newest_first_a_page_at_a_time_or_only_new(app) -> None:
    web = app.test_client()
    assert len(web.get("/api/v1/models").get_json()) == 300  # the whole trail, as before
    newest = web.get("/api/v1/models?descending=true&limit=100").get_json()
    assert [m["id"] for m in newest[:2]] == ["m299", "m298"] and len(newest) == 100
    assert web.get("/api/v1/models?limit=1").get_json()[0]["kind"] == "seed"
    assert [m["id"] for m in web.get("/api/v1/models?after=m296").get_json()] == ["m297", "m298", "m299"]
    assert web.get("/api/v1/models?after=m299").get_json() == []
    assert len(web.get("/api/v1/models?after=m001&limit=10").get_json()) == 10  # far behind: the newest page
    for query, field, status in (("descending=yes", "descending", 400), ("limit=1001", "limit", 400),
                                 ("after=nope", "after", 404)):
        reply = web.get(f"/api/v1/models?{query}")
        assert reply.status_code == status and reply.get_json()["field"] == field, query
