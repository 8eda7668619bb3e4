"""The JSON API under ``/api/v1``: read-only views of state, network, sessions and the trail."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from fedtier.reducer import participation
from fedtier.reducer.app import reducer
from fedtier.reducer.round_pages import MAX_OFFSET, ROUNDS_PAGE, rounds_csv
from fedtier.reducer.downloads import stored_response
from fedtier.reducer.errors import APIError
from fedtier.reducer.live import LIVE_FRESH_S, PAGE_DEFAULT, PAGE_MAX, STATES, current_round
from fedtier.reducer.network import CLIENT_STATES, MAX_PAGE, MAX_QUERY_CHARS
from fedtier.reducer.network import MAX_OFFSET as MAX_CLIENT_OFFSET
from fedtier.reducer.participation import MAX_SEQ
from fedtier.reducer.records import round_summary
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
    """``brief=true`` leaves out the running session and the last round, for a page that polls
    for the state alone (the network, a client, the trail). The last round comes as a summary
    (reducer/records.py): at a thousand clients its per-client lists would be most of every poll."""
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
        reply.update(session=running[0] if running else None,
                     last_round=round_summary(last_round[0]) if last_round else None)
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
    offset = 0 if raw_offset is None else integer_setting("offset", raw_offset, 0, MAX_CLIENT_OFFSET)
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


def _rounds_page() -> tuple[list[dict[str, Any]], int, int]:
    """The rounds a request asks for, the number matching its filter, and the index of the first.

    Rounds are listed in the order the reducer recorded them (the order they started): the
    collection is append-only, so a round's index never changes and a page asked for by
    ``offset`` is the same page later, plus rounds that started since. ``last`` asks for the
    newest ones without knowing how many there are. Either bounds the answer to ROUNDS_PAGE."""
    where = {"session_id": request.args["session_id"]} if "session_id" in request.args else None
    store = reducer().state
    raw_offset, raw_last = request.args.get("offset"), request.args.get("last")
    if raw_offset is not None and raw_last is not None:
        raise APIError(400, "last: give offset or last, not both", field="last")
    if raw_offset is None and raw_last is None:  # the whole list, as before paging existed
        found = store.find(ROUNDS, where=where, limit=_limit())
        return found, len(found), 0
    raw_limit = request.args.get("limit")
    limit = ROUNDS_PAGE if raw_limit is None else integer_setting("limit", raw_limit, 1, ROUNDS_PAGE)
    total = store.count(ROUNDS, where=where)
    if raw_last is not None:
        last = integer_setting("last", raw_last, 1, ROUNDS_PAGE)
        offset, limit = max(0, total - last), min(limit, last)
    else:
        offset = integer_setting("offset", raw_offset, 0, MAX_OFFSET)
    found = store.find(ROUNDS, where=where, limit=limit, offset=offset)
    return found, max(total, offset + len(found)), offset


@bp.get("/rounds")
def rounds():
    found, total, offset = _rounds_page()
    view = _choice("view", ("full", "summary")) or "full"
    reply = jsonify(found if view == "full" else [round_summary(r) for r in found])
    reply.headers["X-Total-Count"] = str(total)
    reply.headers["X-Offset"] = str(offset)
    return reply


@bp.get("/rounds.csv")
def rounds_as_csv():
    """The same rounds as ``/rounds`` (same parameters) as a spreadsheet: a link that works
    without JavaScript, and the raw data behind what a chart draws."""
    found, total, offset = _rounds_page()
    state = reducer().state
    sessions = {sid: state.get(SESSIONS, sid) for sid in {str(r.get("session_id")) for r in found}}
    name = f"rounds-{request.args['session_id'][:40]}" if "session_id" in request.args else "rounds"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return Response(rounds_csv(found, sessions), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{safe}.csv"',
        "X-Total-Count": str(total), "X-Offset": str(offset)})


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
