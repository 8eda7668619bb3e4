"""The model lifecycle: schedules (``/api/v1/schedules``, the ``/schedules`` page) and the
production model (``/api/v1/models/<id>/promote``, ``/api/v1/models/production``,
``/api/v1/promotions``). Writes need the admin; reads follow the read policy (reducer/auth.py).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template

from fedtier.reducer.app import reducer
from fedtier.reducer.auth import require_admin, who
from fedtier.reducer.body import fields
from fedtier.reducer.errors import APIError
from fedtier.reducer.routes.api import download as download_model
from fedtier.reducer.schedules import ACTIVE, PAUSED, TooManySchedules
from fedtier.reducer.trail import MAX_NOTE_CHARS
from fedtier.storage.collections import MODELS

bp = Blueprint("lifecycle", __name__)


def _schedule(schedule_id: str) -> dict[str, Any]:
    schedule = reducer().scheduler.get(schedule_id)
    if schedule is None:
        raise APIError(404, f"no schedule with id {schedule_id!r}")
    return schedule


@bp.get("/schedules")
def schedules_page():
    return render_template("schedules.html", state=reducer().control.state.value)


@bp.post("/api/v1/schedules")
@require_admin
def create_schedule():
    """Every field is checked before anything is stored: a 400 names the field
    (``settings.<name>`` for a session setting, with /start's message)."""
    data = fields(form=False, required=True)
    try:
        schedule = reducer().scheduler.create(data, created_by=who())
    except TooManySchedules as exc:
        raise APIError(409, str(exc), limit="FEDTIER_MAX_SCHEDULES") from None
    return jsonify({"schedule": schedule}), 201


@bp.get("/api/v1/schedules")
def list_schedules():
    return jsonify(reducer().scheduler.all())


@bp.get("/api/v1/schedules/<schedule_id>")
def get_schedule(schedule_id: str):
    return jsonify(_schedule(schedule_id))


def _set_state(schedule_id: str, state: str):
    schedule = reducer().scheduler.set_state(schedule_id, state)
    if schedule is None:
        raise APIError(404, f"no schedule with id {schedule_id!r}")
    return jsonify({"schedule": schedule})


@bp.post("/api/v1/schedules/<schedule_id>/pause")
@require_admin
def pause_schedule(schedule_id: str):
    return _set_state(schedule_id, PAUSED)


@bp.post("/api/v1/schedules/<schedule_id>/resume")
@require_admin
def resume_schedule(schedule_id: str):
    return _set_state(schedule_id, ACTIVE)


@bp.delete("/api/v1/schedules/<schedule_id>")
@require_admin
def delete_schedule(schedule_id: str):
    if not reducer().scheduler.delete(schedule_id):
        raise APIError(404, f"no schedule with id {schedule_id!r}")
    return jsonify({"deleted": schedule_id})


# ---- production
@bp.post("/api/v1/models/<model_id>/promote")
@require_admin
def promote(model_id: str):
    """An empty body, or ``{"note": "..."}`` saying why."""
    data = fields(form=False)
    unknown = sorted(str(k) for k in data if k != "note")
    if unknown:
        raise APIError(400, f"unknown field {unknown[0][:100]!r}: promote takes only note", field=unknown[0][:100])
    note = data.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise APIError(400, f"note: a string of at most {MAX_NOTE_CHARS} characters", field="note")
    r = reducer()
    if r.state.get(MODELS, model_id) is None:
        raise APIError(404, f"no model with id {model_id!r} in the trail")
    promotion = r.trail.promote(model_id, by=who(), note=note)
    return jsonify({"promotion": promotion, "model": r.trail.production()}), 201


def _production() -> dict[str, Any]:
    record = reducer().trail.production()
    if record is None:
        raise APIError(404, "no model has been promoted to production (POST /api/v1/models/<id>/promote)")
    return record


@bp.get("/api/v1/models/production")
def production():
    return jsonify(_production())


@bp.get("/api/v1/models/production/download")
def production_download():
    return download_model(_production()["id"])


@bp.get("/api/v1/promotions")
def promotions():
    return jsonify(reducer().trail.promotions())
