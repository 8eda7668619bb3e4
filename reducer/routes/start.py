"""``/start`` and ``/stop``: sessions of rounds."""
from __future__ import annotations

from flask import Blueprint, jsonify, render_template, request

from fedtier.reducer.app import reducer
from fedtier.reducer.auth import require_admin
from fedtier.reducer.body import fields
from fedtier.reducer.browser import form_reply, wants_page
from fedtier.reducer.errors import APIError
from fedtier.reducer.control import SESSION_SETTINGS, STOP_AFTER_ROUND, STOP_MODES, SessionRequest
from fedtier.round_config import RoundConfig, setting_names

bp = Blueprint("start", __name__)


@bp.get("/start")
def start_form():
    r = reducer()
    return render_template("start.html", state=r.control.state.value, defaults=RoundConfig().to_dict(),
                           clients_active=sum(1 for c in r.network.clients() if c.get("active")))


@bp.post("/start")
@require_admin
def start_session():
    data = fields(required=True)
    if not request.is_json:  # an empty form field means "the default"; an unknown one is still named
        known = SESSION_SETTINGS | set(setting_names())
        data = {k: v for k, v in data.items() if v != "" or k not in known}
    r = reducer()
    session_request = SessionRequest.from_dict(data, defaults={"helper": r.control.helper_name})
    warnings = too_few_clients(session_request.config)
    session = r.control.start_session(session_request)
    if wants_page():
        return form_reply(" ".join([f"Session {session['id']} started: {session['rounds_requested']} rounds.",
                                    *warnings]), to="/")
    return jsonify({"session_id": session["id"], "session": session, "state": r.control.state.value,
                    "warnings": warnings}), 201


def too_few_clients(config: RoundConfig) -> list[str]:
    """What the session will meet at once, said when it starts rather than after rounds fail:
    fewer active clients than a round requires. (The page warns before posting; an API
    client learns it from the reply.) Not a refusal: clients may still be connecting."""
    active = sum(1 for c in reducer().network.clients() if c.get("active"))
    if active >= config.clients_required:
        return []
    return [f"Only {active} client{'' if active == 1 else 's'} active now, {config.clients_required} required: "
            f"each round waits up to {config.wait_for_clients:g} s for them, then fails."]


@bp.post("/stop")
@require_admin
def stop_session():
    """``{"mode": "after_round"}`` (the default: the round in progress finishes and is kept)
    or ``{"mode": "abort"}`` (the combiners drop it now); an empty body is the default."""
    data = fields()
    unknown = sorted(set(data) - {"mode"})
    if unknown:
        raise APIError(400, f"unknown field {unknown[0]!r}: /stop takes only mode", field=unknown[0])
    mode = data.get("mode", STOP_AFTER_ROUND)
    if mode not in STOP_MODES:
        raise APIError(400, f"mode: must be one of {', '.join(STOP_MODES)}, got {mode!r}", field="mode")
    r = reducer()
    stopping = r.control.stop_session(mode)
    if wants_page():
        return form_reply("Stopping after the round in progress." if mode == STOP_AFTER_ROUND
                          else "Aborting the round in progress.")
    return jsonify({**stopping, "state": r.control.state.value}), 202
