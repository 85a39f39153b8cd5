"""The job state machine: every transition is one compare-and-set UPDATE.

``UPDATE jobs SET status=:to … WHERE id=:id AND status IN (:allowed)`` succeeds for
exactly one caller, so a redelivered message or a second worker finds the row already
moved and does nothing, never a duplicate run.

A claim hands the worker a :class:`Fence` (job, worker, attempt number). Every write a
worker makes afterwards adds ``AND worker=:worker AND attempts=:attempt`` to the same
statement, so once the dispatcher has requeued the job and another worker has claimed
it, the first worker's next write matches no row and raises :class:`Superseded`: a
worker that froze, lost its database for a while or was partitioned away can never
overwrite the run that replaced it, end the job, or record its files as the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.orm import Session

from shared.models import Job, JobFile
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
# The queue of a job that waits for other jobs (a sweep waiting for its children): no
# worker serves it and :func:`claim` refuses it, until the job is handed over to its
# kind's queue (shared/kinds/sweep.py).
WAITING_QUEUE = "waiting"

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


@dataclass(frozen=True)
class Fence:
    """The right to write one running job: the worker that claimed it and which attempt.

    The attempt number grows with every claim the dispatcher's requeue allows, so an
    older claim of the same worker never passes; the worker name covers the one case
    where a number comes round again (a draining worker gives its attempt back).
    """

    job_id: str
    worker: str
    attempt: int


class Superseded(Exception):  # noqa: N818 - a state, like Canceled, not an error
    """A fenced write matched no row: the job was requeued and claimed again, canceled or
    ended elsewhere. The worker must stop that job at once and record nothing more."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(
            f"job {fence.job_id} attempt {fence.attempt} on {fence.worker} was superseded"
        )
        self.fence = fence


def fenced(fence: Fence, allowed: frozenset[str] = RUNNING) -> tuple[ColumnElement[bool], ...]:
    """The WHERE terms of every write a worker makes to its job."""
    return (
        Job.id == fence.job_id,
        Job.worker == fence.worker,
        Job.attempts == fence.attempt,
        Job.status.in_(sorted(allowed)),
    )


def fenced_update(
    session: Session, fence: Fence, values: dict[str, Any], allowed: frozenset[str] = RUNNING
) -> None:
    """One fenced UPDATE of the job row; raises Superseded when it matches no row.

    Later statements of the same transaction (file rows) are then covered by the same
    check: on PostgreSQL the UPDATE holds the row lock until commit, and SQLite has one
    writer at a time.
    """
    result = session.execute(
        update(Job)
        .where(*fenced(fence, allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise Superseded(fence)


def transition(
    session: Session,
    job_id: str,
    to: str,
    *,
    expect: str | frozenset[str] | None = None,
    values: dict[str, Any] | None = None,
    fence: Fence | None = None,
    silent_since: datetime | None = None,
    extra: tuple[ColumnElement[bool], ...] = (),
) -> bool:
    """Move ``job_id`` to ``to`` if it is in an allowed state; True when this call moved it.

    ``expect`` narrows the allowed from-states (e.g. only ``processing``); ``fence``
    makes it a worker's own transition, refused once the job was claimed again;
    ``silent_since`` (the reaper's) also needs the last heartbeat to be older than that,
    so a worker that beat after the reaper looked keeps its job; ``extra`` adds terms of
    the caller's. The caller commits; the UPDATE's row count is the compare-and-set result.
    """
    if fence is not None and fence.job_id != job_id:
        raise ValueError(f"fence of job {fence.job_id} used for job {job_id}")
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
    where = fenced(fence, allowed) if fence else (Job.id == job_id, Job.status.in_(sorted(allowed)))
    if silent_since is not None:
        where = (*where, Job.heartbeat_at < silent_since)
    where = (*where, *extra)
    result = session.execute(
        update(Job).where(*where).values(**changes).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def claim(session: Session, job_id: str, worker: str, now: datetime | None = None) -> Fence | None:
    """queued → starting for exactly one worker; counts the attempt and returns the fence.

    The output rows of earlier attempts go in the same transaction: whatever a previous
    attempt recorded before it was lost is not this job's result, and the live attempt
    records its own.
    """
    now = now or utcnow()
    moved = transition(
        session,
        job_id,
        STARTING,
        expect=QUEUED,
        extra=(or_(Job.queue.is_(None), Job.queue != WAITING_QUEUE),),  # not while it waits
        values={
            "worker": worker,
            "attempts": Job.attempts + 1,
            "started_at": now,
            "heartbeat_at": now,
        },
    )
    if not moved:
        return None
    session.execute(
        delete(JobFile)
        .where(JobFile.job_id == job_id, JobFile.attempt.is_not(None))
        .execution_options(synchronize_session=False)
    )
    attempt = session.scalar(select(Job.attempts).where(Job.id == job_id))
    return Fence(job_id, worker, int(attempt))


def hand_back(session: Session, fence: Fence) -> bool:
    """running → queued by the worker itself (a shutdown drain ran out), not counted as
    an attempt; its output rows go too. False when the job was no longer this worker's.

    The attempt number is given back, so the next claim reuses it: the worker must
    delete the attempt's files before this (see worker.runner).
    """
    moved = transition(
        session,
        fence.job_id,
        QUEUED,
        fence=fence,
        values={
            "attempts": Job.attempts - 1,
            "worker": None,
            "heartbeat_at": None,
            "enqueued_at": None,  # the dispatcher publishes it if the worker cannot
        },
    )
    if moved:
        session.execute(
            delete(JobFile)
            .where(JobFile.job_id == fence.job_id, JobFile.attempt == fence.attempt)
            .execution_options(synchronize_session=False)
        )
    return moved


def fail(
    session: Session,
    job_id: str,
    code: str,
    message: str,
    *,
    fence: Fence | None = None,
    silent_since: datetime | None = None,
) -> bool:
    """Any non-terminal state → failed with a code from ERROR_CODES and an actionable message.

    With ``fence``, only while the job is still that worker's attempt; ``silent_since``
    as in :func:`transition`.
    """
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return transition(
        session,
        job_id,
        FAILED,
        values={"error_code": code, "error_message": message[:4000]},
        fence=fence,
        silent_since=silent_since,
    )


def cancel_queued(session: Session, job_id: str) -> bool:
    """queued → canceled; True only for the one caller whose compare-and-set moved it.

    That caller, and no other, owes the ``completed`` webhook.
    """
    return transition(
        session, job_id, CANCELED, expect=QUEUED, values={"cancel_requested_at": utcnow()}
    )


def request_cancel(session: Session, job_id: str) -> str:
    """Cancel a queued job at once, or flag a running one for its next progress write.

    Returns the status the job ends up in (terminal jobs are left unchanged).
    """
    now = utcnow()
    if cancel_queued(session, job_id):
        return CANCELED
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sorted(RUNNING)), Job.cancel_requested_at.is_(None))
        .values(cancel_requested_at=now)
        .execution_options(synchronize_session=False)
    )
    status = session.get(Job, job_id, populate_existing=True)
    return status.status if status else CANCELED
