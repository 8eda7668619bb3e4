"""Every error the API returns is JSON with a message (and the field, when one is at fault)."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from fedtier.helpers.format import ModelFormatError
from fedtier.reducer.control import StateConflict
from fedtier.round_config import RoundConfigError

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.limit = limit  # the FEDTIER_MAX_ variable of the bound that was exceeded


def _body(status: int, message: str, **extra: object):
    body = {"error": message, "status": status, **{k: v for k, v in extra.items() if v is not None}}
    return jsonify(body), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(exc: APIError):
        return _body(exc.status, exc.message, field=exc.field, limit=exc.limit)

    @app.errorhandler(RoundConfigError)
    def bad_setting(exc: RoundConfigError):
        return _body(400, str(exc), field=exc.field)

    @app.errorhandler(ModelFormatError)
    def bad_model(exc: ModelFormatError):
        return _body(400, f"not a valid model: {exc}")

    @app.errorhandler(StateConflict)
    def conflict(exc: StateConflict):
        return _body(409, str(exc), state=exc.state.value)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _body(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        log.exception("unhandled error")
        return _body(500, f"internal error: {exc.__class__.__name__}")
