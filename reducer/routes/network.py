"""``/add`` (a combiner announces itself) and ``/assign`` (discovery for clients)."""
from __future__ import annotations

import re

from flask import Blueprint, jsonify, request

from fedtier.reducer.app import reducer
from fedtier.reducer.auth import require_network
from fedtier.reducer.errors import APIError
from fedtier.reducer.network import NoCombinerError

bp = Blueprint("network", __name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise APIError(400, f"{field} must be 1-128 letters, digits, '.', '_' or '-'", field=field)
    return value


@bp.post("/add")
@require_network
def add_combiner():
    data = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    if not isinstance(data, dict):
        raise APIError(400, "send name, address and port as JSON or form fields")
    name = _name(data.get("name"), "name")
    address = data.get("address")
    if not isinstance(address, str) or not address.strip() or len(address) > 253:
        raise APIError(400, "address must be a host name or IP address", field="address")
    try:
        port = int(data.get("port"))
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise APIError(400, "port must be an integer from 1 to 65535", field="port")
    doc = reducer().network.add_combiner(name, address.strip(), port)
    return jsonify({"combiner": doc}), 201


@bp.get("/assign")
@require_network
def assign_client():
    name = _name(request.args.get("name"), "name")
    try:
        assignment = reducer().network.assign(name)
    except NoCombinerError as exc:
        raise APIError(503, str(exc)) from None
    return jsonify(assignment)
