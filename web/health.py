"""``/healthz``: database, broker and how many workers answer a ping."""

from __future__ import annotations

import redis
from flask import Blueprint, jsonify
from sqlalchemy import text

from web import db, queue

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    body: dict = {}
    ok = True
    try:
        db.session().execute(text("SELECT 1"))
        body["db"] = "ok"
    except Exception as exc:
        ok, body["db"] = False, f"down: {type(exc).__name__}"
    try:
        redis.Redis.from_url(db.settings().broker_url, socket_timeout=1).ping()
        body["redis"] = "ok"
        body["workers"] = queue.count_workers()
    except Exception as exc:
        ok, body["redis"], body["workers"] = False, f"down: {type(exc).__name__}", 0
    return jsonify(body), (200 if ok else 503)
