"""``/`` and ``/plot``: the dashboard. The page is a shell; ``static/dashboard.js`` draws it
from ``/api/v1/dashboard`` and redraws every two seconds."""
from __future__ import annotations

from flask import Blueprint, render_template

from fedtier.reducer.app import reducer

bp = Blueprint("dashboard", __name__)


@bp.get("/")
@bp.get("/plot")
def dashboard():
    return render_template("dashboard.html", state=reducer().control.state.value)
