"""Every API error is JSON ``{"error": {"code", "message", "field"?}}``; never a 500 for input."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.errors import InputError

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def _json(status: int, code: str, message: str, field: str | None = None):
    body: dict = {"code": code, "message": message}
    if field:
        body["field"] = field
    return jsonify({"error": body}), status


def init_app(app: Flask) -> None:
    @app.errorhandler(InputError)
    def input_error(exc: InputError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="atelier"'
        if _wants_json():
            return jsonify(exc.as_dict()), exc.status, headers
        page = render_template("error.html", message=exc.message, status=exc.status)
        return page, exc.status, headers

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc):
        limit = app.config["MAX_CONTENT_LENGTH"]
        message = f"the request is larger than the {limit} byte limit; send smaller files"
        if _wants_json():
            return _json(413, "too_large", message)
        return render_template("error.html", message=message, status=413), 413

    @app.errorhandler(OperationalError)
    def database_down(exc):
        log.error("database unavailable: %s", exc)
        return _json(503, "unavailable", "the database is unavailable; try again shortly")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if _wants_json():
            code = (exc.name or "error").lower().replace(" ", "_")
            return _json(exc.code or 500, code, exc.description or exc.name)
        return render_template("error.html", message=exc.description, status=exc.code), exc.code
