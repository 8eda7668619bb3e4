"""The one way a route reads a request body: the content type checked, JSON parsed with bounds.

Every route that takes fields (``/start``, ``/add``, ``/login``) calls ``fields()``; the
upload routes (``/seed``, ``/package``) call ``require_multipart()``. So no route parses
JSON on its own (``request.get_json`` recurses without bound and accepts ``NaN``), and a
body whose type the route does not take is a 415 naming the types it does, never a body
read as empty: ``curl -d '{"rounds": 3}'`` sends a form type, which once started a
session with the defaults.
"""
from __future__ import annotations

from typing import Any

from flask import request

from fedtier import strict_json
from fedtier.reducer.errors import APIError

JSON = "application/json"
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


def _has_body() -> bool:
    if request.content_length:
        return True
    # chunked or without a length: read what there is (MAX_CONTENT_LENGTH bounds it)
    return request.content_length is None and bool(request.get_data(cache=True))


def _unsupported(expected: list[str]) -> APIError:
    sent = request.mimetype or "no Content-Type"
    return APIError(415, f"send the body as {' or '.join(expected)} (got {sent})", field="Content-Type")


def fields(form: bool = True, required: bool = False) -> dict[str, Any]:
    """The request's fields: a JSON object, or (with ``form``) the form's fields as strings,
    the first value of each. An empty body gives no fields, or with ``required`` is refused:
    a route that acts on defaults (``/start``) is asked for them explicitly, as ``{}``.

    A form whose text is JSON (curl ``-d '{...}'`` without ``-H 'Content-Type: ...'``) is
    a 415: read as a form it would be one field named by the whole text, or nothing."""
    expected = [JSON] + ([URLENCODED, MULTIPART] if form else [])
    if not _has_body():
        if not required:
            return {}
        if request.is_json or (form and request.mimetype in (URLENCODED, MULTIPART)):
            raise APIError(400, "the body is empty: send the settings ({} takes every default)")
        raise _unsupported(expected)
    if request.is_json:
        try:
            data = strict_json.loads(request.get_data(cache=True))
        except strict_json.JSONInputError as exc:
            raise APIError(400, exc.message, field=exc.field or None, limit=exc.limit or None) from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        return data
    if form and request.mimetype in (URLENCODED, MULTIPART):
        if request.mimetype == URLENCODED and request.get_data(cache=True).lstrip()[:1] in (b"{", b"["):
            raise APIError(415, f"the body is JSON: send it with 'Content-Type: {JSON}'", field="Content-Type")
        return {key: value for key, value in request.form.items()}
    raise _unsupported(expected)


def require_multipart() -> None:
    """An upload route takes ``multipart/form-data`` only; anything else is a 415, not a
    missing field."""
    if request.mimetype != MULTIPART and _has_body():
        raise _unsupported([MULTIPART])
