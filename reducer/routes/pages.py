"""The web UI's read-only pages: ``/network``, ``/clients/<name>``, ``/trail`` (also ``/models``)
and ``/sessions``.

Each page is rendered with its data (the latest ``SHOWN`` rows), so it is true without
JavaScript too; its script in ``reducer/static/`` then redraws it from the JSON API every few
seconds. The context processor gives every template (the dashboard, seed and start pages
too) what the navigation and the forms need.
"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, render_template, request, session

from fedtier.aggregators import describe as describe_strategies
from fedtier.reducer import auth
from fedtier.reducer.app import reducer
from fedtier.reducer import participation
from fedtier.reducer.control import ROUNDS, SESSIONS
from fedtier.reducer.errors import APIError
from fedtier.reducer.live import LIVE_FRESH_S, TIMELINE_ROWS, current_round, round_timeline
from fedtier.reducer.network import utc_text
from fedtier.reducer.routes.api import client_query, filter_clients, summarize
from fedtier.reducer.routes.network import NAME
from fedtier.round_config import integer_setting

SHOWN = 100  # rows a page renders by itself; the script shows them all, the API has them all
CLIENTS_PAGE = 50  # clients the network page lists at once, by itself and in its script

bp = Blueprint("pages", __name__)


@bp.app_context_processor
def ui_context() -> dict[str, Any]:
    r = reducer()
    # who the header says is here: "admin" (a login session, with a logout), "anonymous" (a
    # login link) or "open" (no admin token: nothing to log in to)
    who = "open" if auth.is_open() else "admin" if session.get("admin") else "anonymous"
    return {"ui": {"helper": r.control.helper_name, "strategies": describe_strategies(), "who": who}}


@bp.app_template_filter("utc")
def utc(epoch: float | None) -> str:
    """A time for a page without JavaScript (the scripts show local time)."""
    return utc_text(epoch)


@bp.app_template_filter("metrics")
def metrics_text(metrics: dict[str, Any] | None) -> str:
    shown = [(k, v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and k != "num_examples"]
    return " · ".join(f"{k} {v:.4g}" for k, v in sorted(shown)) or "–"


def _page(template: str, **data: Any) -> str:
    return render_template(template, state=reducer().control.state.value, shown=SHOWN, **data)


@bp.get("/network")
def network_page():
    """Counts by combiner and state, and one page of clients (a search by name, state and
    combiner in the query, as the API takes it): at a thousand clients the page stays small."""
    r = reducer()
    q, state, combiner, offset, limit = client_query()
    limit = min(limit or CLIENTS_PAGE, SHOWN)
    everyone = r.network.clients()
    found = filter_clients(everyone, q, state, combiner)
    query = {k: v for k, v in (("q", q), ("state", state), ("combiner", combiner)) if v}
    return _page("network.html", combiners=sorted(r.network.combiners(), key=lambda c: c["name"]),
                 summary=summarize(everyone), clients=found[offset:offset + limit], matched=len(found),
                 query=query, offset=offset, limit=limit, now=time.time())


@bp.get("/clients/<name>")
def client_page(name: str):
    """One client: where it is, and its part in each round (newest first, a page at a time)."""
    if not NAME.fullmatch(name):
        raise APIError(400, "name must be 1-128 letters, digits, '.', '_' or '-'", field="name")
    r = reducer()
    raw_before = request.args.get("before")
    before = None if raw_before is None else integer_setting("before", raw_before, 1, 2**53)
    records, next_before = participation.history(r.state, name, participation.HISTORY_PAGE, before)
    client = r.network.client(name)
    if client is None and not records and before is None:
        raise APIError(404, f"no client named {name!r}")
    return _page("client.html", name=name, client=client, records=records, next_before=next_before,
                 before=before)


@bp.get("/trail")
@bp.get("/models")
def trail_page():
    models = reducer().trail.all()
    return _page("trail.html", models=sorted(models, key=lambda m: m.get("created_at", 0), reverse=True)[:SHOWN],
                 total=len(models))


@bp.get("/sessions")
def sessions_page():
    r = reducer()
    return _page("sessions.html", sessions=r.state.find(SESSIONS, order_by="started_at", descending=True,
                                                        limit=SHOWN), total=r.state.count(SESSIONS))


@bp.get("/rounds/<round_id>")
def round_page(round_id: str):
    """One round's timeline: a bar per client for its download, train and upload, drawn here
    (true without JavaScript); a running round's page reloads itself every few seconds."""
    r = reducer()
    doc = r.state.get(ROUNDS, round_id)
    if doc is None:
        raise APIError(404, f"no round with id {round_id!r}")
    live = None
    current, ended = r.control.live_round()
    if doc.get("status") == "running" and current is not None and current.get("id") == round_id:
        # the clients of the running round, as many as the page draws, from one snapshot
        live = current_round(current, r.control.state.value, r.network.live_rounds(LIVE_FRESH_S), ended,
                             limit=TIMELINE_ROWS)
    return _page("round.html", round=doc, timeline=round_timeline(doc, live), live=live)
