"""CSRF protection: a double-submit cookie.

Each page that has a form sets a random ``atelier_csrf`` cookie and puts the same value
in a hidden ``csrf_token`` field. Another site can make a browser *send* the cookie but
cannot *read* it, so it cannot put the matching value in a forged form. This needs no
server-side session or secret key, so it works the same behind several gunicorn workers.

Every unsafe HTML form post is checked. The JSON API under ``/api/v1`` is checked too
whenever a browser could have sent it on its own: when the login cookie authenticates
it, and, with ``ATELIER_AUTH=off``, when it carries a browser's ``Origin`` or
``Sec-Fetch-Site`` header. The page's script sends the token as ``X-CSRF-Token``.
Calls with ``Authorization: Bearer`` (which no other site can make a browser add) and
curl or scripts against an auth-off server need no token.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, g, request
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


def _matches(sent: str) -> bool:
    cookie = request.cookies.get(COOKIE, "")
    return bool(_TOKEN.match(cookie)) and secrets.compare_digest(cookie, sent)


def cross_origin() -> bool:
    """Whether the browser says this request comes from another site or origin.

    The token alone can be beaten by a page that can *set* our cookie (a sibling
    subdomain, plain http on the path, another port of localhost): it plants a cookie
    and sends the same value. Such a page is another origin, and every current browser
    says so in ``Sec-Fetch-Site`` and, on a POST, in ``Origin``.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()


def check() -> None:
    """Refuse an unsafe request from another origin, or whose form (or header) token does
    not match the cookie."""
    if request.method not in UNSAFE_METHODS:
        return
    token = request.form.get(FIELD) or request.headers.get(HEADER, "")
    if cross_origin() or not _matches(token):
        raise InputError(
            "the form's security token is missing or stale (cookies blocked, or the page was "
            "open too long); reload the page and submit again",
            field=FIELD,
            status=400,
            code="csrf_failed",
        )


def _sent_by_a_browser() -> bool:
    """Browsers mark every cross-origin POST with Origin and every fetch with Sec-Fetch-Site."""
    return "Origin" in request.headers or "Sec-Fetch-Site" in request.headers


def check_api() -> None:
    """Unsafe API calls carried by ambient credentials need the token in ``X-CSRF-Token``."""
    if request.method not in UNSAFE_METHODS or not request.path.startswith("/api/"):
        return
    via = g.get("auth_via")
    if via == "session" or (via == "off" and _sent_by_a_browser()):
        if cross_origin() or not _matches(request.headers.get(HEADER, "")):
            raise InputError(
                f"{HEADER}: a browser's API call needs the page's CSRF token in the {HEADER} "
                "header; scripts send Authorization: Bearer <token> instead",
                field=HEADER,
                status=403,
                code="csrf_failed",
            )


def _set_cookie(response: Response) -> Response:
    if g.pop("csrf_new", False):
        response.set_cookie(
            COOKIE,
            g.csrf_token,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure or current_app.config["SESSION_COOKIE_SECURE"],
            max_age=30 * 24 * 3600,
        )
    return response


def protect(bp: Blueprint) -> None:
    """Check every unsafe request of ``bp``'s views."""
    bp.before_request(check)


def init_app(app: Flask) -> None:
    """Call after ``auth.init_app``: the API check reads how the request was authenticated."""
    app.before_request(check_api)
    app.after_request(_set_cookie)
    app.jinja_env.globals["csrf_field"] = hidden_field
    app.jinja_env.globals["csrf_token"] = token
