"""``/`` and ``/plot``: the dashboard. The page renders the latest rounds itself (true
without JavaScript); ``static/dashboard.js`` draws the rest from ``/api/v1/status``, the sessions
and their rounds, and redraws every two seconds."""
from __future__ import annotations

from flask import Blueprint, render_template

from fedtier.reducer.app import reducer
from fedtier.reducer.control import ROUNDS

bp = Blueprint("dashboard", __name__)

LATEST = 20  # rounds the page lists without JavaScript


@bp.get("/")
@bp.get("/plot")
def dashboard():
    r = reducer()
    rounds = r.state.find(ROUNDS, order_by="started_at", descending=True, limit=LATEST)
    return render_template("dashboard.html", state=r.control.state.value, rounds=rounds,
                           total=r.state.count(ROUNDS))
