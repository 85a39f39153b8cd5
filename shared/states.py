"""The job state machine: every transition is one compare-and-set UPDATE.

``UPDATE jobs SET status=:to … WHERE id=:id AND status IN (:allowed)`` succeeds for
exactly one caller, so a redelivered message or a second worker finds the row already
moved and does nothing, never a duplicate run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.models import Job
from shared.timeutil import utcnow

QUEUED = "queued"
STARTING = "starting"
PROCESSING = "processing"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELED = "canceled"

STATUSES = (QUEUED, STARTING, PROCESSING, SUCCEEDED, FAILED, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})
RUNNING = frozenset({STARTING, PROCESSING})

# to-state -> the states it may be entered from
ALLOWED_FROM: dict[str, frozenset[str]] = {
    QUEUED: frozenset({STARTING, PROCESSING}),  # handed back by a reaper or a shutting worker
    STARTING: frozenset({QUEUED}),
    PROCESSING: frozenset({STARTING}),
    SUCCEEDED: frozenset({PROCESSING}),
    FAILED: frozenset({QUEUED, STARTING, PROCESSING}),
    CANCELED: frozenset({QUEUED, STARTING, PROCESSING}),
}

ERROR_CODES = frozenset(
    {"invalid_input", "out_of_memory", "timeout", "worker_lost", "attempts_exhausted", "internal"}
)


class IllegalTransition(ValueError):
    """Asked for a transition the state machine never allows (a programming error)."""


def transition(
    session: Session,
    job_id: str,
    to: str,
    *,
    expect: str | frozenset[str] | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move ``job_id`` to ``to`` if it is in an allowed state; True when this call moved it.

    ``expect`` narrows the allowed from-states (e.g. only ``processing``). The caller
    commits; the UPDATE's row count is the compare-and-set result.
    """
    if to not in ALLOWED_FROM:
        raise IllegalTransition(f"unknown status {to!r}")
    allowed = ALLOWED_FROM[to]
    if expect is not None:
        wanted = frozenset({expect}) if isinstance(expect, str) else frozenset(expect)
        if not wanted <= allowed:
            raise IllegalTransition(f"{sorted(wanted - allowed)} -> {to} is not a legal transition")
        allowed = wanted
    changes: dict[str, Any] = {"status": to, **(values or {})}
    if to in TERMINAL:
        changes.setdefault("finished_at", utcnow())
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sorted(allowed)))
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def claim(session: Session, job_id: str, worker: str, now: datetime | None = None) -> bool:
    """queued → starting for exactly one worker; counts the attempt."""
    now = now or utcnow()
    return transition(
        session,
        job_id,
        STARTING,
        expect=QUEUED,
        values={
            "worker": worker,
            "attempts": Job.attempts + 1,
            "started_at": now,
            "heartbeat_at": now,
        },
    )


def fail(session: Session, job_id: str, code: str, message: str) -> bool:
    """Any non-terminal state → failed with a code from ERROR_CODES and an actionable message."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return transition(
        session, job_id, FAILED, values={"error_code": code, "error_message": message[:4000]}
    )


def request_cancel(session: Session, job_id: str) -> str:
    """Cancel a queued job at once, or flag a running one for its next progress write.

    Returns the status the job ends up in (terminal jobs are left unchanged).
    """
    now = utcnow()
    if transition(session, job_id, CANCELED, expect=QUEUED, values={"cancel_requested_at": now}):
        return CANCELED
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sorted(RUNNING)), Job.cancel_requested_at.is_(None))
        .values(cancel_requested_at=now)
        .execution_options(synchronize_session=False)
    )
    status = session.get(Job, job_id, populate_existing=True)
    return status.status if status else CANCELED
