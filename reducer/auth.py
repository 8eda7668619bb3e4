"""Who may do what on the reducer's HTTP side.

- admin (``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN``): every write: ``/seed``, ``/start``, ``/stop``;
- network (``FEDN_ALLIANCE_AUTH_TOKEN``, or admin): ``/add`` and ``/assign``;
- reads (pages, GET ``/api/v1``): open when ``FEDTIER_PUBLIC_READ`` is true (default),
  else any of the two tokens or a logged-in browser.
A browser logs in once at ``/login`` with the admin token; the session cookie it gets
is signed, HttpOnly, SameSite=Strict, and Secure when the reducer serves HTTPS.
With no tokens configured (the sandbox) everything is open and the log says so.
"""
from __future__ import annotations

import functools
import logging
import secrets
from typing import Any, Callable

from flask import Blueprint, Flask, current_app, jsonify, redirect, render_template, request, session

from fedtier.reducer.body import fields
from fedtier.reducer.errors import APIError
from fedtier.transport.auth import parse_authorization, token_matches

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)


def _tokens() -> tuple[str, str]:
    settings = current_app.extensions["fedtier"].settings
    return settings.admin_auth_token, settings.auth_token


def _presented() -> str | None:
    return parse_authorization(request.headers.get("Authorization"))


def is_admin() -> bool:
    admin, _ = _tokens()
    if not admin:
        return True
    return bool(session.get("admin")) or token_matches(_presented(), admin)


def is_network() -> bool:
    admin, network = _tokens()
    if not admin and not network:
        return True
    token = _presented()
    return bool(session.get("admin")) or token_matches(token, admin) or token_matches(token, network)


def _refuse(what: str) -> APIError:
    return APIError(401, f"{what}: send 'Authorization: Token <token>'" +
                    (" or log in at /login" if what.startswith("admin") else ""))


def require_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not is_admin():
            raise _refuse("admin token required (FEDN_ALLIANCE_ADMIN_AUTH_TOKEN)")
        return view(*args, **kwargs)
    return wrapped


def require_network(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not is_network():
            raise _refuse("network token required (FEDN_ALLIANCE_AUTH_TOKEN)")
        return view(*args, **kwargs)
    return wrapped


def install(app: Flask) -> None:
    """Session cookie hardening, the read policy, and /login, /logout."""
    settings = app.extensions["fedtier"].settings
    app.secret_key = settings.secret_key or secrets.token_hex(32)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_SECURE=bool(settings.tls_cert))
    if not settings.admin_auth_token:
        log.warning("REST authentication is OFF: set FEDN_ALLIANCE_ADMIN_AUTH_TOKEN to protect /seed and /start")

    @app.before_request
    def read_policy() -> Any:
        if settings.public_read or request.method not in ("GET", "HEAD"):
            return None
        if request.endpoint in ("auth.login_form", "static") or request.path == "/assign":
            return None
        if is_admin() or is_network():
            return None
        if request.path.startswith("/api/"):
            raise APIError(401, "reading needs a token (FEDTIER_PUBLIC_READ is false)")
        return redirect("/login")

    app.register_blueprint(bp)


@bp.get("/login")
def login_form() -> Any:
    return render_template("login.html", state="", error=None)


@bp.post("/login")
def login() -> Any:
    admin, _ = _tokens()
    token = fields().get("token")
    token = token if isinstance(token, str) else None
    if not admin or not token_matches(token, admin):
        if request.is_json:
            raise APIError(401, "that is not the admin token")
        return render_template("login.html", state="", error="That is not the admin token."), 401
    session.clear()
    session["admin"] = True
    if request.is_json:
        return jsonify({"logged_in": True})
    target = request.args.get("next") or "/"
    # only a path on this reducer: "//host" and "https://host" would send the browser elsewhere
    return redirect(target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/")


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return jsonify({"logged_in": False}) if request.is_json else redirect("/")
