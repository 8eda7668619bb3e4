"""Answers for a browser that has no JavaScript.

The pages' forms post to the same routes the API clients use. A script (static/app.js) asks
for JSON; a browser posting a form by itself asks for HTML (``Accept: text/html``) and must
land on a page, not on raw JSON: it is redirected (303, so the next request is a GET) to a
page that shows the outcome as a flashed message, the error naming its field. Unknown pages
get an HTML 404 the same way. API clients (a JSON body, ``Accept: application/json``, or no
preference, as ``requests`` and curl send) keep their JSON.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, flash, redirect, render_template, request

# a flashed message rides in the session cookie (4 KB at most in browsers): longer ones are cut
FLASH_CHARS = 600

# where a browser's form post lands: its own form page, or for /stop the page it came from
FORM_PAGES = {"/seed": "/seed", "/start": "/start", "/stop": "/start", "/login": "/login"}


def wants_page() -> bool:
    """A browser navigating (a link, a form post), not a script or an API client."""
    if request.is_json or request.path.startswith("/api/"):
        return False
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and request.accept_mimetypes["text/html"] > request.accept_mimetypes["application/json"]


def back_to() -> str:
    """The page a posted form came from, when it is one of ours, else the form's own page."""
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc == request.host and referrer.path.startswith("/") and not referrer.path.startswith("//"):
        return referrer.path
    return FORM_PAGES.get(request.path, "/")


def form_reply(message: str, to: str | None = None, error: bool = False, field: str | None = None) -> Response:
    """Flash ``message`` and send the browser to ``to`` (default: back where it came from)."""
    text = f"{field}: {message}" if field and not message.startswith(f"{field}:") else message
    flash(text if len(text) <= FLASH_CHARS else text[:FLASH_CHARS - 1] + "…", "error" if error else "ok")
    return redirect(to or back_to(), code=303)


def html_error(status: int, message: str) -> tuple[str, int]:
    """The error page for a browser (an unknown page, a method a page does not take)."""
    return render_template("error.html", state="", status=status, message=message), status
