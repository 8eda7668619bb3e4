"""The JSON API under ``/api/v1``: read-only views of state, network, sessions and the trail."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from fedtier.reducer.app import reducer
from fedtier.reducer.downloads import stored_response
from fedtier.reducer.errors import APIError
from fedtier.reducer.live import LIVE_FRESH_S, PAGE_DEFAULT, PAGE_MAX, STATES, current_round
from fedtier.round_config import integer_setting
from fedtier.storage.collections import MODELS, ROUNDS, SESSIONS, VALIDATIONS
from fedtier.storage.model_store import ModelNotFoundError

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def _one(collection: str, doc_id: str) -> dict[str, Any]:
    doc = reducer().state.get(collection, doc_id)
    if doc is None:
        raise APIError(404, f"no {collection[:-1]} with id {doc_id!r}")
    return doc


def _limit() -> int | None:
    raw = request.args.get("limit")
    if raw is None:
        return None
    return integer_setting("limit", raw, 1, 100_000)  # ASCII digits only: "²".isdigit() is true


@bp.get("/status")
def status():
    r = reducer()
    latest = r.trail.latest()
    running = r.state.find(SESSIONS, where={"status": "running"}, limit=1)
    last_round = r.state.find(ROUNDS, order_by="started_at", descending=True, limit=1)
    combiners = r.network.combiners()
    clients = r.network.clients()
    return jsonify({
        "state": r.control.state.value,
        "instance": r.instance_id,
        "latest_model": latest,
        "production_model": r.trail.production(),
        "session": running[0] if running else None,
        "last_round": last_round[0] if last_round else None,
        "combiners_online": sum(1 for c in combiners if c.get("online")),
        "combiners": len(combiners),
        "clients_active": sum(1 for c in clients if c.get("active")),
        "clients": len(clients),
    })


@bp.get("/combiners")
def combiners():
    return jsonify(reducer().network.combiners())


@bp.get("/clients")
def clients():
    return jsonify(reducer().network.clients())


@bp.get("/clients/summary")
def clients_summary():
    """Counts by combiner and by state, so a page at the scale of the lab never needs every client."""
    by_combiner: dict[str, dict[str, int]] = {}
    active = 0
    all_clients = reducer().network.clients()
    for c in all_clients:
        row = by_combiner.setdefault(str(c.get("combiner") or ""), {"active": 0, "inactive": 0})
        state = "active" if c.get("active") else "inactive"
        row[state] += 1
        active += state == "active"
    return jsonify({"total": len(all_clients), "active": active, "inactive": len(all_clients) - active,
                    "by_combiner": by_combiner})


@bp.get("/sessions")
def sessions():
    return jsonify(reducer().state.find(SESSIONS, order_by="started_at", limit=_limit()))


@bp.get("/sessions/<session_id>")
def session(session_id: str):
    return jsonify(_one(SESSIONS, session_id))


@bp.get("/rounds")
def rounds():
    where = {"session_id": request.args["session_id"]} if "session_id" in request.args else None
    return jsonify(reducer().state.find(ROUNDS, where=where, order_by="started_at", limit=_limit()))


@bp.get("/rounds/current")
def round_current():
    """The round in progress, client by client (reducer/live.py): bounded at any number of clients."""
    args = request.args
    offset = integer_setting("offset", args.get("offset", 0), 0, 10_000_000)
    limit = integer_setting("limit", args.get("limit", PAGE_DEFAULT), 1, PAGE_MAX)
    state = args.get("state")
    if state is not None and state not in STATES:
        raise APIError(400, f"state must be one of {', '.join(STATES)}", field="state")
    combiner = args.get("combiner")
    if combiner is not None and not 1 <= len(combiner) <= 128:
        raise APIError(400, "combiner must be a name of 1-128 characters", field="combiner")
    r = reducer()
    round_doc, ended = r.control.live_round()
    live = r.network.live_rounds(LIVE_FRESH_S if round_doc is not None else None)  # fresh while a round runs
    return jsonify(current_round(round_doc, r.control.state.value, live, ended,
                                 offset=offset, limit=limit, state=state, combiner=combiner))


@bp.get("/rounds/<round_id>")
def round_(round_id: str):
    return jsonify(_one(ROUNDS, round_id))


@bp.get("/models")
def models():
    return jsonify(reducer().trail.all())


@bp.get("/models/<model_id>")
def model(model_id: str):
    return jsonify(_one(MODELS, model_id))


@bp.get("/models/<model_id>/download")
def download(model_id: str):
    record = _one(MODELS, model_id)
    try:
        return stored_response(reducer().models, model_id, record["sha256"], int(record["size"]),
                               what=f"model {model_id}", mimetype="application/octet-stream", headers={
                                   "Content-Disposition": f'attachment; filename="{model_id}.safetensors"',
                                   "X-Model-SHA256": record["sha256"]})
    except ModelNotFoundError:
        raise APIError(404, f"model {model_id} is in the trail but its bytes are missing") from None


@bp.get("/validations")
def validations():
    where = {"round_id": request.args["round_id"]} if "round_id" in request.args else None
    return jsonify(reducer().state.find(VALIDATIONS, where=where, limit=_limit()))
