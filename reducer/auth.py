"""Who may do what on the reducer's HTTP side.

- admin (``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN``, people and the SDK): everything, and alone every
  write: ``/seed``, ``/start``, ``/stop``, ``/package``;
- a combiner (its signed ``combiner`` credential): ``/add`` under the name it names, only;
- a client (its signed ``client`` credential): ``/assign`` under the name it names, and the
  compute package;
- reads (pages, GET ``/api/v1``, ``/metrics``): open when ``FEDTIER_PUBLIC_READ`` is true (default),
  else the admin, a logged-in browser, or any valid client or combiner credential; ``/metrics``
  also opens to ``FEDTIER_METRICS_TOKEN``, which opens nothing else (a Prometheus server's).
The reducer's own credentials (role ``reducer``, audience one combiner) open nothing here.
A browser logs in once at ``/login`` with the admin token; the session cookie it gets is
signed, HttpOnly, SameSite=Strict, and Secure when the reducer serves HTTPS.
With no admin token and no keys (the sandbox) everything is open and the log says so loudly.
"""
from __future__ import annotations

import functools
import logging
import secrets
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from flask import Blueprint, Flask, current_app, g, jsonify, redirect, render_template, request, session

from fedtier.identity import CredentialError, Identity, NotPermitted, Verifier, load_verify_key
from fedtier.reducer.body import fields
from fedtier.reducer.errors import APIError
from fedtier.transport.auth import parse_authorization, token_matches

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)
PARTICIPANTS = ("client", "combiner")  # the signed roles the REST API knows; never "reducer"


def _admin_token() -> str:
    return current_app.extensions["fedtier"].settings.admin_auth_token


def _presented() -> str | None:
    return parse_authorization(request.headers.get("Authorization"))


def is_open() -> bool:
    """No admin token: the sandbox, where every caller is trusted (Settings.check_reducer
    makes the admin token, the verify key and the signing key come all or none)."""
    return not _admin_token()


def is_admin() -> bool:
    if is_open():
        return True
    return bool(session.get("admin")) or token_matches(_presented(), _admin_token())


def who() -> str:
    """How the records of an admin's act (a promotion, a schedule) name the one who did it.
    There is one admin token, so this says how it was presented, not which person held it."""
    if is_open():
        return "anyone (identities not checked)"
    if token_matches(_presented(), _admin_token()):
        return "admin (token)"
    return "admin (browser login)" if session.get("admin") else "unknown"


def participant(roles: tuple[str, ...] = PARTICIPANTS) -> Identity:
    """The caller's verified credential in one of ``roles``; CredentialError says why not."""
    verifier: Verifier = current_app.extensions["fedtier.verifier"]
    return verifier.verify(_presented(), roles=roles)


def caller(roles: tuple[str, ...]) -> Identity | None:
    """Who is calling, as far as ``roles`` go: None for the admin (or anyone in the sandbox);
    raises a 401 without a valid credential, a 403 with a valid one in another role."""
    if is_admin():
        return None
    try:
        identity = participant(roles)
    except NotPermitted as exc:
        raise APIError(403, str(exc)) from None
    except CredentialError as exc:
        what = " or ".join(f"a {r} credential" for r in roles)
        raise APIError(401, f"{what} or the admin token required (send 'Authorization: Token <token>'): "
                            f"{exc}") from None
    g.identity = identity
    return identity


def require_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not is_admin():
            raise APIError(401, "admin token required (FEDN_ALLIANCE_ADMIN_AUTH_TOKEN): send "
                                "'Authorization: Token <token>' or log in at /login")
        return view(*args, **kwargs)
    return wrapped


def require_name(identity: Identity | None, name: str) -> None:
    """A participant acts only under its own name: the one its credential gives."""
    if identity is not None and identity.name != name:
        log.warning("%s credential for %s tried to act as %s: refused", identity.role, identity.name, name)
        raise APIError(403, f"the {identity.role} credential presented is for {identity.name!r}, not {name!r}",
                       field="name")


def install(app: Flask) -> None:
    """Session cookie hardening, the read policy, and /login, /logout."""
    settings = app.extensions["fedtier"].settings
    settings.check_reducer()
    app.extensions["fedtier.verifier"] = Verifier(load_verify_key(settings.token_verify_key,
                                                                  "FEDTIER_TOKEN_VERIFY_KEY")) \
        if settings.token_verify_key else None
    app.secret_key = settings.secret_key or secrets.token_hex(32)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_SECURE=bool(settings.tls_cert))
    if not settings.admin_auth_token:
        log.warning("IDENTITIES ARE NOT CHECKED by this reducer: anyone may seed, start rounds, upload the "
                    "compute package and register combiners under any name. Set FEDN_ALLIANCE_ADMIN_AUTH_TOKEN, "
                    "FEDTIER_TOKEN_VERIFY_KEY and FEDTIER_TOKEN_SIGNING_KEY (fedtier token keygen) for any "
                    "network reachable by others")

    @app.before_request
    def read_policy() -> Any:
        if settings.public_read or request.method not in ("GET", "HEAD"):
            return None
        if request.endpoint in ("auth.login_form", "static") or request.path == "/assign":
            return None
        if is_admin():
            return None
        if request.path == "/metrics" and settings.metrics_token and \
                token_matches(_presented(), settings.metrics_token):
            return None
        try:
            participant()
            return None
        except CredentialError:
            pass
        if request.path.startswith("/api/") or request.path == "/metrics":  # a program: a 401, not /login
            also = ", or FEDTIER_METRICS_TOKEN" if request.path == "/metrics" else ""
            raise APIError(401, f"reading needs the admin token or a client or combiner credential{also} "
                                "(FEDTIER_PUBLIC_READ is false)")
        here = request.full_path.rstrip("?")
        return redirect("/login" if here == "/" else f"/login?next={quote(here)}")  # back here after it

    app.register_blueprint(bp)


def local_path(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/``: after login, ``next`` may not send
    a browser anywhere else (``//host``, ``/\\host``, ``https://host``, ``javascript:``...)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(c in target for c in "\\\r\n\t") or any(ord(c) < 32 for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


@bp.get("/login")
def login_form() -> Any:
    return render_template("login.html", state="", error=None, next=local_path(request.args.get("next")))


@bp.post("/login")
def login() -> Any:
    admin = _admin_token()
    token = fields().get("token")
    token = token if isinstance(token, str) else None
    if not admin or not token_matches(token, admin):
        if request.is_json:
            raise APIError(401, "that is not the admin token")
        return render_template("login.html", state="", error="That is not the admin token.",
                               next=local_path(request.args.get("next"))), 401
    session.clear()
    session["admin"] = True
    if request.is_json:
        return jsonify({"logged_in": True})
    return redirect(local_path(request.args.get("next")))


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return jsonify({"logged_in": False}) if request.is_json else redirect("/")
