"""The web UI's read-only pages: ``/network``, ``/trail`` (also ``/models``) and ``/sessions``.

Each page is a shell that its script in ``reducer/static/`` fills from the JSON API
and refreshes every few seconds. The context processor gives every template (the
dashboard, seed and start pages too) what the navigation and the forms need.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, session

from fedtier.aggregators import AGGREGATORS
from fedtier.reducer import auth
from fedtier.reducer.app import reducer

bp = Blueprint("pages", __name__)


@bp.app_context_processor
def ui_context() -> dict[str, Any]:
    r = reducer()
    # who the header says is here: "admin" (a login session, with a logout), "anonymous" (a
    # login link) or "open" (no admin token: nothing to log in to)
    who = "open" if auth.is_open() else "admin" if session.get("admin") else "anonymous"
    return {"ui": {"helper": r.control.helper_name, "aggregators": sorted(AGGREGATORS), "who": who}}


def _page(template: str) -> str:
    return render_template(template, state=reducer().control.state.value)


@bp.get("/network")
def network_page():
    return _page("network.html")


@bp.get("/trail")
@bp.get("/models")
def trail_page():
    return _page("trail.html")


@bp.get("/sessions")
def sessions_page():
    return _page("sessions.html")
