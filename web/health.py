"""``/healthz``: database, broker and how many workers are alive.

The endpoint is public, so its answer is computed at most once per
:data:`DEFAULT_CACHE_SECONDS` per process (Flask config ``HEALTHZ_CACHE_SECONDS``) and
reused in between: a caller polling it as fast as it can costs one ``SELECT 1``, one
Redis ``PING`` and one ``SCAN`` of the worker heartbeat keys per period, not per call.
Workers are counted from the heartbeats they publish (:mod:`shared.workers`), never by
a broadcast ping that every worker must answer.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from shared.db import get_engine
from shared.settings import Settings
from shared.workers import redis_client
from web import db, queue
from web.cache import TTLCache

bp = Blueprint("health", __name__)
DEFAULT_CACHE_SECONDS = 2.0
_answers: TTLCache[tuple[dict[str, Any], int]] = TTLCache()


def probe(settings: Settings) -> tuple[dict[str, Any], int]:
    """Check the database and Redis and count live workers: (body, HTTP status)."""
    body: dict[str, Any] = {}
    ok = True
    try:
        with get_engine(settings.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
        body["db"] = "ok"
    except Exception as exc:
        ok, body["db"] = False, f"down: {type(exc).__name__}"
    try:
        redis_client(settings.broker_url).ping()
        body["redis"] = "ok"
        body["workers"] = queue.count_workers(settings)
    except Exception as exc:
        ok, body["redis"], body["workers"] = False, f"down: {type(exc).__name__}", 0
    return body, (200 if ok else 503)


@bp.get("/healthz")
def healthz():
    settings = db.settings()
    seconds = current_app.config.get("HEALTHZ_CACHE_SECONDS", DEFAULT_CACHE_SECONDS)
    key = (settings.database_url, settings.redis_url)
    body, status = _answers.get(key, seconds, lambda: probe(settings))
    return jsonify(body), status
