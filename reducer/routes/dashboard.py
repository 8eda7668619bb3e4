"""``/`` and ``/plot``: a status page (the web UI work fills this in)."""
from __future__ import annotations

from flask import Blueprint, render_template

from fedtier.reducer.app import reducer
from fedtier.reducer.control import ROUNDS

bp = Blueprint("dashboard", __name__)


@bp.get("/")
@bp.get("/plot")
def dashboard():
    r = reducer()
    return render_template("dashboard.html", state=r.control.state.value,
                           rounds=r.state.find(ROUNDS, order_by="started_at"),
                           combiners=r.network.combiners(), clients=r.network.clients(),
                           models=r.trail.all())
