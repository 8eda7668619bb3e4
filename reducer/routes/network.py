"""``/add`` (a combiner announces itself) and ``/assign`` (discovery for clients)."""
from __future__ import annotations

import re

from flask import Blueprint, jsonify, request

from fedtier.reducer.app import reducer
from fedtier.reducer.auth import caller, require_name
from fedtier.reducer.body import fields
from fedtier.reducer.errors import APIError
from fedtier.reducer.network import CombinerRefused, NoCombinerError
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
def add_combiner():
    """Register a combiner: only under the name its ``combiner`` credential gives (or by the
    admin), and never moving a name a live combiner holds to another address."""
    identity = caller(("combiner",))
    data = fields()
    name = _name(data.get("name"), "name")
    require_name(identity, name)
    address = data.get("address")
    if not isinstance(address, str) or not HOST.fullmatch(address.strip()):
        raise APIError(400, "address must be a host name or IP address (at most 253 characters)", field="address")
    port = integer_setting("port", data.get("port"), 1, 65535)
    try:
        doc = reducer().network.add_combiner(name, address.strip(), port)
    except CombinerRefused as exc:
        raise APIError(exc.status, str(exc), field=exc.field) from None
    return jsonify({"combiner": doc}), 201


@bp.get("/assign")
def assign_client():
    identity = caller(("client",))
    name = _name(request.args.get("name"), "name")
    require_name(identity, name)
    try:
        assignment = reducer().network.assign(name)
    except NoCombinerError as exc:
        raise APIError(503, str(exc)) from None
    return jsonify(assignment)
