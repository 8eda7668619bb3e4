"""Every error the API returns is JSON with a message (and the field, when one is at fault)."""
from __future__ import annotations

import logging

from urllib.parse import quote

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from fedtier.helpers.format import ModelFormatError
from fedtier.reducer.browser import FORM_PAGES, back_to, form_reply, html_error, wants_page
from fedtier.strict_json import JSONInputError
from fedtier.reducer.control import StateConflict
from fedtier.round_config import RoundConfigError
from fedtier.storage.model_store import (ModelCorruptError, ModelExistsError, ModelNotFoundError, ModelStoreError,
                                         StorageFullError, describe_os_error, is_full,
                                         is_medium_failure)
from fedtier.storage.state_store import StateStoreError, StateStoreFullError

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.limit = limit  # the FEDTIER_MAX_ variable of the bound that was exceeded


def _body(status: int, message: str, **extra: object):
    """The error as JSON; to a browser without JavaScript, a page saying it (reducer/browser.py)."""
    if wants_page():
        if request.method == "POST" and request.path in FORM_PAGES:
            to = f"/login?next={quote(back_to())}" if status == 401 and request.path != "/login" else None
            field = extra.get("field")
            return form_reply(message, to=to, error=True, field=field if isinstance(field, str) else None)
        if request.method in ("GET", "HEAD"):
            return html_error(status, message)
    body = {"error": message, "status": status, **{k: v for k, v in extra.items() if v is not None}}
    return jsonify(body), status


def count_store_error(exc: Exception) -> None:
    """Count a store error the reducer reports in its metrics (reducer/metrics.py)."""
    reducer = current_app.extensions.get("fedtier")
    if reducer is not None:
        reducer.metrics.store_error(exc)


error_reply = _body  # for handlers registered elsewhere (app.py's 413)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(exc: APIError):
        return _body(exc.status, exc.message, field=exc.field, limit=exc.limit)

    @app.errorhandler(RoundConfigError)
    def bad_setting(exc: RoundConfigError):
        return _body(400, str(exc), field=exc.field)

    @app.errorhandler(JSONInputError)
    def bad_json(exc: JSONInputError):
        return _body(400, exc.message, field=exc.field or None)

    @app.errorhandler(ModelFormatError)
    def bad_model(exc: ModelFormatError):
        return _body(400, f"not a valid model: {exc}")

    @app.errorhandler(StateConflict)
    def conflict(exc: StateConflict):
        return _body(409, str(exc), state=exc.state.value)

    # A store that fails is named as such, with a status a client can act on: 507 (Insufficient
    # Storage) when the medium is full, 503 when the store is out of reach or broken, 500 only
    # for data damaged at rest; never "internal error: [Errno 28]".
    @app.errorhandler(ModelStoreError)
    def model_store(exc: ModelStoreError):
        count_store_error(exc)
        status = (404 if isinstance(exc, ModelNotFoundError) else 409 if isinstance(exc, ModelExistsError)
                  else 507 if isinstance(exc, StorageFullError) else 500 if isinstance(exc, ModelCorruptError)
                  else 503)
        log.error("model store: %s", exc)
        return _body(status, f"model store: {exc}")

    @app.errorhandler(StateStoreError)
    def state_store(exc: StateStoreError):
        count_store_error(exc)
        log.error("state store: %s", exc)
        return _body(507 if isinstance(exc, StateStoreFullError) else 503, f"state store: {exc}")

    @app.errorhandler(OSError)
    def disk(exc: OSError):
        # the reducer's own files (uploads spooled under FEDTIER_DATA_DIR/reducer)
        if not is_medium_failure(exc):
            return internal(exc)
        log.error("reducer data directory: %s (%s)", describe_os_error(exc), exc.filename)
        return _body(507 if is_full(exc) else 503, f"reducer data directory: {describe_os_error(exc)}")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _body(exc.code or 500, exc.description or exc.name)

    # The last resort: input the routes should have refused (reducer/body.py parses every
    # body with bounds) but that reached Python's recursion or float limits, or a value
    # check, is still the request's fault. Logged with its trace, since it means a check
    # is missing at the edge.
    @app.errorhandler(RecursionError)
    @app.errorhandler(OverflowError)
    @app.errorhandler(ValueError)
    def escaped_bad_input(exc: Exception):
        log.error("input error escaped the route's checks: %r", exc, exc_info=exc)
        return _body(400, f"invalid input ({exc.__class__.__name__})")

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        log.exception("unhandled error")
        return _body(500, f"internal error: {exc.__class__.__name__}")
