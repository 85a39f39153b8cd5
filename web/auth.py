"""Who is asking: Bearer tokens for the API, a login (token → signed cookie) for the pages.

With ATELIER_AUTH=off (the embedded default) every request is the owner ``local``.
Another owner's job is reported as not found everywhere, so ids leak nothing.
"""

from __future__ import annotations

from flask import (
    Blueprint,
    Flask,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from shared.errors import InputError
from shared.tokens import Principal, read_principal, read_principal_by_id, verify_token
from web import csrf, db
from web.security import safe_redirect_target

LOCAL_OWNER = "local"
_LOCAL = Principal(LOCAL_OWNER)  # immutable: one for every request when auth is off
bp = Blueprint("auth", __name__)
PUBLIC_PREFIXES = (
    "/static/",
    "/healthz",
    "/metrics",
    "/login",
    "/logout",
    "/api/v1/openapi.json",
    "/api/docs",
    "/docs",
)


def principal() -> Principal:
    return g.principal


def current_owner() -> str:
    """The owner new jobs belong to."""
    return g.principal.owner


def owner_filter() -> str | None:
    """The owner whose jobs this request may see; None (all) for admins."""
    return None if g.principal.is_admin else g.principal.owner


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _authenticate() -> object | None:
    if db.settings().auth == "off":
        g.principal, g.auth_via = _LOCAL, "off"
        return None
    token = _bearer()
    url = db.settings().database_url
    found = read_principal(url, token) if token else None
    g.auth_via = "bearer"
    if found is None and "token_id" in session:
        found = read_principal_by_id(url, session["token_id"])
        g.auth_via = "session"
        if found is None:
            session.clear()  # revoked since login
    if found is not None:
        g.principal = found
        return None
    if request.path.startswith(PUBLIC_PREFIXES) or request.endpoint == "static":
        g.principal, g.auth_via = Principal("anonymous"), "anonymous"
        return None
    if request.path.startswith("/api/"):
        message = (
            "missing or invalid token: send Authorization: Bearer <token> "
            "(create one with `atelier token create OWNER`)"
        )
        raise InputError(message, status=401, code="unauthorized")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        found = verify_token(db.session(), request.form.get("token", "").strip())
        if found is not None:
            session.clear()
            session["token_id"] = found.token_id
            return redirect(safe_redirect_target(request.args.get("next"), "/"), code=303)
        error = "That token is not valid (or was revoked)."
    status = 401 if error else 200
    return render_template("login.html", error=error, auth=db.settings().auth), status


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("auth.login"), code=303)


csrf.protect(bp)


def init_app(app: Flask) -> None:
    app.before_request(_authenticate)
    app.register_blueprint(bp)
