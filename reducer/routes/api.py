"""The JSON API under ``/api/v1``: read-only views of state, network, sessions and the trail."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from fedtier.reducer import participation
from fedtier.reducer.app import reducer
from fedtier.reducer.downloads import stored_response
from fedtier.reducer.errors import APIError
from fedtier.reducer.network import CLIENT_STATES, MAX_OFFSET, MAX_PAGE, MAX_QUERY_CHARS
from fedtier.reducer.participation import MAX_SEQ
from fedtier.reducer.trail import MAX_MODELS_PAGE
from fedtier.reducer.routes.network import NAME
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
    """``brief=true`` leaves out the running session and the last round: at a thousand clients the
    round carries every client's update and times, which a page that polls for the state alone
    (the network, a client, the trail) must not fetch every few seconds."""
    raw = request.args.get("brief")
    if raw is not None and raw not in ("true", "false"):
        raise APIError(400, "brief must be true or false", field="brief")
    r = reducer()
    latest = r.trail.latest()
    combiners = r.network.combiners()
    clients = r.network.clients()
    reply: dict[str, Any] = {
        "state": r.control.state.value,
        "instance": r.instance_id,
        "latest_model": latest,
        "production_model": r.trail.production(),
        "combiners_online": sum(1 for c in combiners if c.get("online")),
        "combiners": len(combiners),
        "clients_active": sum(1 for c in clients if c.get("active")),
        "clients": len(clients),
    }
    if raw != "true":
        running = r.state.find(SESSIONS, where={"status": "running"}, limit=1)
        last_round = r.state.find(ROUNDS, order_by="started_at", descending=True, limit=1)
        reply.update(session=running[0] if running else None, last_round=last_round[0] if last_round else None)
    return jsonify(reply)


@bp.get("/combiners")
def combiners():
    return jsonify(reducer().network.combiners())


def _choice(name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.args.get(name) or None  # empty: "any", as a form's first option sends it
    if raw is not None and raw not in allowed:
        raise APIError(400, f"{name} must be one of {', '.join(allowed)}", field=name)
    return raw


def _text(name: str, max_chars: int) -> str | None:
    raw = request.args.get(name) or None
    if raw is not None and (len(raw) > max_chars or not raw.isprintable()):
        raise APIError(400, f"{name} must be at most {max_chars} printable characters", field=name)
    return raw


def filter_clients(all_clients: list[dict[str, Any]], q: str | None, state: str | None,
                   combiner: str | None) -> list[dict[str, Any]]:
    """The clients matching a search (a part of the name, any case), a state and a combiner,
    by name: what the network page lists, a page at a time."""
    needle = (q or "").strip().lower()
    return sorted((c for c in all_clients
                   if (not needle or needle in str(c.get("name", "")).lower())
                   and (state is None or bool(c.get("active")) == (state == "active"))
                   and (combiner is None or c.get("combiner") == combiner)),
                  key=lambda c: str(c.get("name", "")))


def client_query() -> tuple[str | None, str | None, str | None, int, int | None]:
    """``q``, ``state``, ``combiner``, ``offset`` and ``limit`` of a client search, each checked
    (a 400 naming the field); used by the API and the network page alike."""
    q = _text("q", MAX_QUERY_CHARS)
    state = _choice("state", CLIENT_STATES)
    combiner = _text("combiner", MAX_QUERY_CHARS)
    raw_offset = request.args.get("offset")
    offset = 0 if raw_offset is None else integer_setting("offset", raw_offset, 0, MAX_OFFSET)
    raw_limit = request.args.get("limit")
    limit = None if raw_limit is None else integer_setting("limit", raw_limit, 1, MAX_PAGE)
    return q, state, combiner, offset, limit


@bp.get("/clients")
def clients():
    """Every client, or one page of a search: the page at the scale of the lab asks for 50 at
    a time; ``X-Total-Count`` says how many matched."""
    q, state, combiner, offset, limit = client_query()
    found = filter_clients(reducer().network.clients(), q, state, combiner)
    page = found[offset:] if limit is None else found[offset:offset + limit]
    reply = jsonify(page)
    reply.headers["X-Total-Count"] = str(len(found))
    return reply


@bp.get("/clients/<name>/history")
def client_history(name: str):
    """The client's part in each round, newest first, a page at a time (``before``: the
    ``next_before`` of the page before; ``after``: only rounds newer than that seq)."""
    if not NAME.fullmatch(name):
        raise APIError(400, "name must be 1-128 letters, digits, '.', '_' or '-'", field="name")
    raw_limit = request.args.get("limit")
    limit = participation.HISTORY_PAGE if raw_limit is None else \
        integer_setting("limit", raw_limit, 1, participation.MAX_HISTORY_PAGE)
    before, after = (None if request.args.get(k) is None else integer_setting(k, request.args[k], 0, MAX_SEQ)
                     for k in ("before", "after"))
    r = reducer()
    records, next_before = participation.history(r.state, name, limit, before, after)
    info = r.network.client(name)
    if info is None and not records and before is None and after is None:
        raise APIError(404, f"no client named {name!r}")
    return jsonify({"client": name, "info": info, "records": records, "next_before": next_before})


def summarize(all_clients: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by combiner and by state, so a page at the scale of the lab never needs every client."""
    by_combiner: dict[str, dict[str, int]] = {}
    active = 0
    for c in all_clients:
        row = by_combiner.setdefault(str(c.get("combiner") or ""), {"active": 0, "inactive": 0})
        state = "active" if c.get("active") else "inactive"
        row[state] += 1
        active += state == "active"
    return {"total": len(all_clients), "active": active, "inactive": len(all_clients) - active,
            "by_combiner": by_combiner}


@bp.get("/clients/summary")
def clients_summary():
    return jsonify(summarize(reducer().network.clients()))


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


@bp.get("/rounds/<round_id>")
def round_(round_id: str):
    return jsonify(_one(ROUNDS, round_id))


@bp.get("/models")
def models():
    """The trail in the order it grew; ``descending`` newest first; ``limit`` at most that many;
    ``after`` only the models committed after that one (among the newest ``limit``, default
    100): a page polls for what is new, not the whole trail."""
    raw = request.args.get("descending")
    if raw is not None and raw not in ("true", "false"):
        raise APIError(400, "descending must be true or false", field="descending")
    descending = raw == "true"
    raw_limit = request.args.get("limit")
    limit = None if raw_limit is None else integer_setting("limit", raw_limit, 1, MAX_MODELS_PAGE)
    after = _text("after", 128)
    r = reducer()
    if after is None:
        found = r.state.find(MODELS, descending=descending, limit=limit)
    else:
        if r.trail.get(after) is None:
            raise APIError(404, f"after: no model with id {after!r}", field="after")
        newest = r.state.find(MODELS, descending=True, limit=limit or 100)
        ids = [m["id"] for m in newest]
        newer = newest[:ids.index(after)] if after in ids else newest
        found = newer if descending else newer[::-1]
    reply = jsonify(found)
    reply.headers["X-Total-Count"] = str(r.state.count(MODELS))  # the whole trail
    return reply


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
