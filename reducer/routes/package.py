"""``/package``: the compute package clients run, uploaded by the admin.

Packages are stored like models (immutable, by content) and recorded in the
``packages`` collection; the newest is the one clients get. Downloading one needs a
client credential (or the admin token) even when reads are public: it is the federation's code.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from flask import Blueprint, jsonify, request

from fedtier.package import PackageError, PackageTooLarge, check, sha256_hex
from fedtier.reducer.app import reducer
from fedtier.reducer.auth import caller, require_admin
from fedtier.reducer.body import require_multipart
from fedtier.reducer.downloads import stored_response
from fedtier.reducer.errors import APIError
from fedtier.storage.collections import PACKAGES
from fedtier.storage.model_store import ModelExistsError

bp = Blueprint("package", __name__)



def current() -> dict | None:
    found = reducer().state.find(PACKAGES, order_by="created_at", descending=True, limit=1)
    return found[0] if found else None


@bp.post("/package")
@require_admin
def upload_package():
    require_multipart()
    upload = request.files.get("package")
    if upload is None:
        raise APIError(400, "send the compute package (fedtier package --project DIR) as multipart field "
                            "'package'", field="package")
    data = upload.read()
    try:
        names = check(data, reducer().settings.limits)
    except PackageTooLarge as exc:  # refused while reading: nothing was unpacked or stored
        raise APIError(413, f"not an acceptable compute package: {exc}", field="package",
                       limit=exc.variable) from None
    except PackageError as exc:
        raise APIError(400, f"not a valid compute package: {exc}", field="package") from None
    digest = sha256_hex(data)
    r = reducer()
    with tempfile.NamedTemporaryFile(dir=r.work_dir) as tmp:
        Path(tmp.name).write_bytes(data)
        try:
            r.models.put_file(f"package-{digest[:40]}", tmp.name)
        except ModelExistsError:
            pass  # the same bytes uploaded again: already stored
    record = {"id": f"{digest}-{time.time_ns()}", "sha256": digest, "size": len(data), "files": len(names),
              "created_at": time.time()}
    r.state.insert(PACKAGES, record)
    r.scheduler.package_uploaded(record)  # "on_package" schedules: each records its own outcome
    return jsonify({"package": record}), 201


@bp.get("/api/v1/package")
def package_info():
    caller(("client",))
    record = current()
    if record is None:
        raise APIError(404, "no compute package has been uploaded (POST /package)")
    return jsonify(record)


@bp.get("/api/v1/package/download")
def package_download():
    caller(("client",))
    record = current()
    if record is None:
        raise APIError(404, "no compute package has been uploaded (POST /package)")
    return stored_response(reducer().models, f"package-{record['sha256'][:40]}", record["sha256"],
                           int(record["size"]), what=f"compute package {record['sha256'][:12]}",
                           mimetype="application/gzip", headers={"X-Package-SHA256": record["sha256"]})
