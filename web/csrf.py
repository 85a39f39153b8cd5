"""CSRF protection for the HTML form posts: a double-submit cookie.

Each page that has a form sets a random ``atelier_csrf`` cookie and puts the same value
in a hidden ``csrf_token`` field. Another site can make a browser *send* the cookie but
cannot *read* it, so it cannot put the matching value in a forged form. This needs no
server-side session or secret key, so it works the same behind several gunicorn workers.

Only the HTML blueprint is protected; the JSON API under ``/api/v1`` stays token-based
and CSRF-free so that curl and scripts work without a cookie dance.
"""

from __future__ import annotations

import re
import secrets

from flask import Blueprint, Flask, Response, g, request
from markupsafe import Markup, escape

from shared.errors import InputError

COOKIE = "atelier_csrf"
FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def token() -> str:
    """This browser's token: the cookie's value, or a new one (sent with the response)."""
    if "csrf_token" not in g:
        existing = request.cookies.get(COOKIE, "")
        if _TOKEN.match(existing):
            g.csrf_token = existing
        else:
            g.csrf_token = secrets.token_urlsafe(32)
            g.csrf_new = True
    return g.csrf_token


def hidden_field() -> Markup:
    """The ``<input type=hidden>`` every protected form carries."""
    return Markup(f'<input type="hidden" name="{FIELD}" value="{escape(token())}">')


def check() -> None:
    """Refuse an unsafe request whose form (or header) token does not match the cookie."""
    if request.method not in UNSAFE_METHODS:
        return
    cookie = request.cookies.get(COOKIE, "")
    sent = request.form.get(FIELD) or request.headers.get(HEADER, "")
    if not (_TOKEN.match(cookie) and secrets.compare_digest(cookie, sent)):
        raise InputError(
            "the form's security token is missing or stale (cookies blocked, or the page was "
            "open too long); reload the page and submit again",
            field=FIELD,
            status=400,
            code="csrf_failed",
        )


def _set_cookie(response: Response) -> Response:
    if g.pop("csrf_new", False):
        response.set_cookie(
            COOKIE,
            g.csrf_token,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
            max_age=30 * 24 * 3600,
        )
    return response


def protect(bp: Blueprint) -> None:
    """Check every unsafe request of ``bp``'s views."""
    bp.before_request(check)


def init_app(app: Flask) -> None:
    app.after_request(_set_cookie)
    app.jinja_env.globals["csrf_field"] = hidden_field
    app.jinja_env.globals["csrf_token"] = token
