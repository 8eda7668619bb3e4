"""``/add`` (a combiner announces itself) and ``/assign`` (discovery for clients)."""
from __future__ import annotations

import re

from flask import Blueprint, jsonify, request

from fedtier.reducer.app import reducer
from fedtier.reducer.auth import require_network
from fedtier.reducer.body import fields
from fedtier.reducer.errors import APIError
from fedtier.reducer.network import NoCombinerError
from fedtier.round_config import integer_setting

bp = Blueprint("network", __name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# a DNS name (with '_', which Docker's DNS serves), IPv4, or IPv6 (bracketed or not)
HOST = re.compile(r"[A-Za-z0-9:\[][A-Za-z0-9._:\[\]-]{0,252}")


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise APIError(400, f"{field} must be 1-128 letters, digits, '.', '_' or '-'", field=field)
    return value


@bp.post("/add")
@require_network
def add_combiner():
    data = fields()
    name = _name(data.get("name"), "name")
    address = data.get("address")
    if not isinstance(address, str) or not HOST.fullmatch(address.strip()):
        raise APIError(400, "address must be a host name or IP address (at most 253 characters)", field="address")
    port = integer_setting("port", data.get("port"), 1, 65535)
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
