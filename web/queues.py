"""Queue administration (``/api/v1/queues``) and the submit's ``priority`` field.

Pausing a queue keeps its jobs ``queued`` and stops every worker from claiming them
(shared/fairness.py says how); resuming publishes them again at once, and the dispatcher
does it on its next pass if Redis is down now. Only an admin token may pause, resume or
see the queues; with ``ATELIER_AUTH=off`` the one local user is the operator and may too.
A queue name is checked against the queues this server's job kinds use (404 otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, g, jsonify
from sqlalchemy import select

from shared import fairness
from shared.errors import InputError
from shared.jobs import mark_enqueued
from shared.kinds import KINDS
from shared.models import Job
from shared.queue import QUEUES
from shared.states import QUEUED
from shared.timeutil import isoformat
from web import db, queue
from web.auth import principal

bp = Blueprint("queues", __name__, url_prefix="/api/v1/queues")
MAX_QUEUE_NAME = 32  # the width of jobs.queue and queue_pauses.queue


def is_operator() -> bool:
    """An admin token, or anyone when auth is off (the one local user runs the server)."""
    return principal().is_admin or g.get("auth_via") == "off"


def submit_priority(form: Mapping[str, str]) -> int:
    """The ``priority`` of a submit (0-9, default 5), checked here at the edge: 400 when
    it is no such number, 403 above 5 for anyone but an operator (:func:`is_operator`)."""
    return fairness.parse_priority(form.get("priority"), is_admin=is_operator())


def known_queues() -> list[str]:
    """The queues this server's job kinds run on (the built-in ``gpu`` and ``cpu`` too)."""
    return sorted(set(QUEUES) | {spec.queue for spec in KINDS.values()})


def _require_operator() -> None:
    if not is_operator():
        raise InputError(
            "queue administration needs an admin token (atelier token create OWNER --admin)",
            status=403,
            code="forbidden",
        )


def _queue_name(name: str) -> str:
    if len(name) > MAX_QUEUE_NAME or name not in known_queues():
        shown = name[:MAX_QUEUE_NAME]
        raise InputError(
            f"no queue {shown!r}; the queues are {', '.join(known_queues())}",
            field="queue",
            status=404,
            code="not_found",
        )
    return name


def _state(item: fairness.QueueState) -> dict[str, Any]:
    return {
        "name": item.name,
        "paused": item.paused,
        "paused_at": isoformat(item.paused_at),
        "paused_by": item.paused_by,
        "queued": item.queued,
        "running": item.running,
    }


def _one(name: str) -> dict[str, Any]:
    return _state(fairness.queue_states(db.session(), [name])[0])


@bp.get("")
def list_queues():
    """Every queue: paused or not, jobs waiting and running."""
    _require_operator()
    states = fairness.queue_states(db.session(), known_queues())
    return jsonify({"queues": [_state(item) for item in states]})


@bp.post("/<name>/pause")
def pause_queue(name: str):
    """Pause (idempotent): running jobs finish, queued ones stay queued."""
    _require_operator()
    name = _queue_name(name)
    session = db.session()
    fairness.pause(session, name, principal().owner)
    session.commit()
    return jsonify(_one(name))


@bp.post("/<name>/resume")
def resume_queue(name: str):
    """Resume (idempotent) and publish the queue's waiting jobs again."""
    _require_operator()
    name = _queue_name(name)
    session = db.session()
    if fairness.resume(session, name):
        session.commit()
        _publish_waiting(name)
    return jsonify(_one(name))


def _publish_waiting(name: str) -> None:
    """One message per queued job of the resumed queue that has none; stops at the first
    broker failure (the dispatcher publishes the rest). At most ATELIER_MAX_QUEUED_TOTAL
    jobs wait, which bounds this loop."""
    session = db.session()
    rows = session.execute(
        select(Job.id, Job.kind)
        .where(Job.status == QUEUED, Job.queue == name, Job.enqueued_at.is_(None))
        .order_by(Job.created_at)
        .limit(db.settings().max_queued_total)
    ).all()
    session.commit()
    for job_id, kind in rows:
        if not queue.enqueue(job_id, kind):
            return
        mark_enqueued(session, job_id)
        session.commit()


# --- the OpenAPI description (web/openapi.py adds these) ---------------------------------

PRIORITY_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "minimum": fairness.PRIORITY_MIN,
    "maximum": fairness.PRIORITY_MAX,
    "default": fairness.DEFAULT_PRIORITY,
    "description": "higher runs first; within a priority owners take turns. Above "
    f"{fairness.USER_PRIORITY_MAX} needs an admin token (403 naming priority)",
}


def openapi_paths() -> dict[str, Any]:
    """The queue endpoints as OpenAPI 3.1 path items."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    queue_object = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "paused": {"type": "boolean"},
            "paused_at": {"type": ["string", "null"], "format": "date-time"},
            "paused_by": {"type": ["string", "null"]},
            "queued": {"type": "integer"},
            "running": {"type": "integer"},
        },
        "required": ["name", "paused", "queued", "running"],
    }
    one = {"description": "the queue", "content": {"application/json": {"schema": queue_object}}}
    refused = {
        "403": {"description": "not an admin token", **error},
        "404": {"description": "no such queue", **error},
    }
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "maxLength": MAX_QUEUE_NAME},
    }

    def action(verb: str, summary: str) -> dict[str, Any]:
        return {
            "parameters": [name],
            "post": {
                "operationId": f"{verb}Queue",
                "summary": summary,
                "responses": {"200": one, **refused},
            },
        }

    return {
        "/api/v1/queues": {
            "get": {
                "operationId": "listQueues",
                "summary": "Every queue: paused or not, jobs waiting and running (admin)",
                "responses": {
                    "200": {
                        "description": "the queues",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "queues": {"type": "array", "items": queue_object}
                                    },
                                }
                            }
                        },
                    },
                    "403": refused["403"],
                },
            }
        },
        "/api/v1/queues/{name}/pause": action(
            "pause", "Pause a queue: its jobs stay queued, none is claimed (admin, idempotent)"
        ),
        "/api/v1/queues/{name}/resume": action(
            "resume", "Resume a paused queue and publish its waiting jobs (admin, idempotent)"
        ),
    }
