"""``/seed``: the first model of the trail, uploaded as multipart field ``seed``."""
from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Blueprint, jsonify, render_template, request

from fedtier.reducer.app import reducer
from fedtier.reducer.auth import require_admin
from fedtier.reducer.body import require_multipart
from fedtier.reducer.browser import form_reply, wants_page
from fedtier.reducer.errors import APIError

bp = Blueprint("seed", __name__)


@bp.get("/seed")
def seed_form():
    r = reducer()
    seed = next((m for m in r.trail.all() if m.get("kind") == "seed"), None)
    return render_template("seed.html", state=r.control.state.value, seed=seed, helper=r.control.helper_name)


@bp.post("/seed")
@require_admin
def seed_upload():
    require_multipart()
    upload = request.files.get("seed")
    if upload is None or not upload.filename and upload.content_length == 0:
        raise APIError(400, "send the seed model as multipart field 'seed'", field="seed")
    r = reducer()
    with tempfile.TemporaryDirectory(dir=r.work_dir) as tmp:
        path = Path(tmp) / "seed"
        upload.save(path)
        if path.stat().st_size == 0:
            raise APIError(400, "the seed file is empty", field="seed")
        record = r.control.seed(path)
    if wants_page():
        return form_reply(f"Seed model {record['id']} accepted (sha256 {record['sha256']}).", to="/seed")
    return jsonify({"model": record, "state": r.control.state.value}), 201
