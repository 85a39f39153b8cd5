"""Fair queues: which queued job a worker runs next, where a job stands, paused queues.

The order, within one queue: higher ``priority`` first; within a priority, owners take
turns, the owner whose last start on this queue is oldest (never: first) going next,
so one owner's 500 queued jobs delay another owner's single job by at most one job per
worker; within an owner, oldest first.

Where the order is decided: when a worker takes a message, not when the web sends it.
A run message is only a wake-up call for its queue: the task claims *the best queued
job of that queue* (:func:`pick_next`), which need not be the job the message names.
Publishing every job at submit (the outbox, the enqueue after commit) stays as it was,
so every queued job still has a message out and every message is still useful; nothing
has to meter Redis, and no dispatcher sits between a submit and a free worker. The
claim in :func:`shared.states.claim` stays the one gate: two workers that pick the same
job race on its compare-and-set, the loser picks again, and a canceled job is no longer
``queued`` and so is never picked. The messages then count what is waiting; their ids
only label them: a message left over when its job ran on another message runs the next
best job, or nothing.

Paused queues are rows of ``queue_pauses``: a worker that takes a message of a paused
queue claims nothing and marks the message's job unpublished, the dispatcher publishes
no job of a paused queue, and pausing marks every queued job of the queue unpublished,
so the resume (web/queues.py) sends one message per waiting job, and the dispatcher's
next pass any that it could not.

What it costs: the dispatcher's lost-message check looks for a message labelled with
each waiting job's id, and a job whose labelled message ran another job has none, so it
is published once more; the spare message later runs a job or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Label,
    Select,
    case,
    delete,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.orm import Session

from shared.errors import InputError
from shared.models import Job, QueuePause
from shared.states import QUEUED, RUNNING
from shared.timeutil import utcnow

PRIORITY_MIN, PRIORITY_MAX = 0, 9
DEFAULT_PRIORITY = 5
USER_PRIORITY_MAX = 5  # above this only admin tokens may submit
PICK_TRIES = 5  # a lost claim race picks again, this many times per message

_JOBS = Job.__table__


def parse_priority(value: str | None, *, is_admin: bool) -> int:
    """The ``priority`` field of a submit: a whole number 0-9, 5 when absent or blank.

    Refused with 400 when it is not one, and with 403 above 5 for a non-admin token: a
    user cannot buy a place ahead of everyone else's jobs.
    """
    text = (value or "").strip()
    if not text:
        return DEFAULT_PRIORITY
    if not (text.isascii() and text.isdigit()) or not PRIORITY_MIN <= int(text) <= PRIORITY_MAX:
        raise InputError(
            f"priority must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}",
            field="priority",
        )
    priority = int(text)
    if priority > USER_PRIORITY_MAX and not is_admin:
        raise InputError(
            f"priority above {USER_PRIORITY_MAX} needs an admin token",
            field="priority",
            status=403,
            code="forbidden",
        )
    return priority


def _served_at(owner: Any, queue: Any) -> ColumnElement[Any]:
    """When ``owner``'s latest job on ``queue`` started (NULL: never); ix_jobs_owner_served
    answers it from the end of one index range."""
    served = _JOBS.alias("served")
    return (
        select(func.max(served.c.started_at))
        .where(served.c.owner == owner, served.c.queue == queue)
        .scalar_subquery()
    )


def _waiting(alias: Any, queue: Any, priority: Any) -> tuple[ColumnElement[bool], ...]:
    return (alias.c.status == QUEUED, alias.c.queue == queue, alias.c.priority == priority)


def pick_next(session: Session, queue: str) -> str | None:
    """The id of the queued job of ``queue`` that should run next, or None.

    Three indexed reads (ix_jobs_fair_order, ix_jobs_owner_served): the top priority
    waiting, the owner of that priority who has waited longest for a turn, that owner's
    oldest job. The caller claims it with :func:`shared.states.claim`, which decides.
    """
    top = session.scalar(
        select(func.max(Job.priority)).where(Job.status == QUEUED, Job.queue == queue)
    )
    if top is None:
        return None
    served = _served_at(Job.owner, queue)
    owner = session.scalar(
        select(Job.owner)
        .where(*_waiting(_JOBS, queue, top))
        .group_by(Job.owner)
        .order_by(
            case((served.is_(None), 0), else_=1),
            served,
            func.min(Job.created_at),
            Job.owner,
        )
        .limit(1)
    )
    return session.scalar(
        select(Job.id)
        .where(*_waiting(_JOBS, queue, top), Job.owner == owner)
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )


# The place of the row ``jobs`` in its queue's fair order, for the job read statement
# (one statement per read: a job page polls it every second). Written as SQL because it
# nests correlated subqueries three levels deep, which both SQLite and PostgreSQL run
# as written; ``me`` is the job's own numbers, ``g`` one row per other owner waiting at
# the same priority. Two parts have a second spelling for SQLite (position_column).
_POSITION_SQL = """CASE WHEN jobs.status = 'queued' THEN (
  SELECT CAST(1 + me.higher + me.rounds + coalesce((
    SELECT sum(CASE WHEN g.waiting < me.rounds + g.turn_first
                    THEN g.waiting ELSE me.rounds + g.turn_first END)
    FROM (
      SELECT o.waiting AS waiting,
             CASE WHEN (o.served IS NULL AND me.served IS NOT NULL)
                    OR o.served < me.served
                    OR ((o.served = me.served OR (o.served IS NULL AND me.served IS NULL))
                        AND (o.first_at < me.first_at
                             OR (o.first_at = me.first_at AND o.owner < jobs.owner)))
                  THEN 1 ELSE 0 END AS turn_first
      FROM ({others}) AS o
    ) AS g
  ), 0) AS INTEGER)
  FROM (
    SELECT
      (SELECT count(*) FROM jobs AS h
       WHERE h.status = 'queued' AND h.queue = jobs.queue
         AND h.priority > jobs.priority) AS higher,
      {rounds} AS rounds,
      (SELECT max(s.started_at) FROM jobs AS s
       WHERE s.owner = jobs.owner AND s.queue = jobs.queue) AS served,
      (SELECT min(m.created_at) FROM jobs AS m
       WHERE m.status = 'queued' AND m.queue = jobs.queue
         AND m.priority = jobs.priority AND m.owner = jobs.owner) AS first_at
  ) AS me
) END"""

# A prediction: the order pick_next serves if nothing new arrives (a job of a higher
# priority that starts counts as its owner's turn, which this does not foresee). In that
# order come every job of a higher priority; then turns in rounds, each owner of the
# job's priority giving one job per round, in the order of their last start (never
# first, then whose oldest job is older). The job is in round r (r: its owner's jobs
# queued before it), so ahead of it are those r jobs and, of every other owner, the
# first r jobs, plus one more when that owner's turn comes first.
_OWNERS_WAITING = """
        SELECT x.owner AS owner, count(*) AS waiting, min(x.created_at) AS first_at,
               (SELECT max(s.started_at) FROM jobs AS s
                WHERE s.owner = x.owner AND s.queue = jobs.queue) AS served
        FROM jobs AS x
        WHERE x.status = 'queued' AND x.queue = jobs.queue
          AND x.priority = jobs.priority AND x.owner {other} jobs.owner
        GROUP BY x.owner"""
_EARLIER = """(SELECT count(*) FROM jobs AS m
       WHERE m.status = 'queued' AND m.queue = jobs.queue
         AND m.priority = jobs.priority AND m.owner = jobs.owner
         AND {earlier})"""
_SPELLINGS = {
    # one condition each: the plan PostgreSQL runs cheapest
    "": {
        "others": _OWNERS_WAITING.format(other="<>"),
        "rounds": _EARLIER.format(
            earlier="(m.created_at < jobs.created_at "
            "OR (m.created_at = jobs.created_at AND m.id < jobs.id))"
        ),
    },
    # SQLite reads a range of ix_jobs_fair_order only for a condition on its next column
    # (not <>, not an OR): so the other owners as the two ranges either side of this one,
    # the earlier jobs as older, plus as old with a smaller id. The job read's query took
    # 20 instead of 51 us (the 150th of 200 queued jobs): the owner's whole queue was
    # read twice before. On PostgreSQL these spellings cost more than they save.
    "sqlite": {
        "others": _OWNERS_WAITING.format(other="<")
        + "\n        UNION ALL"
        + _OWNERS_WAITING.format(other=">"),
        "rounds": _EARLIER.format(earlier="m.created_at < jobs.created_at")
        + "\n      + "
        + _EARLIER.format(earlier="m.created_at = jobs.created_at AND m.id < jobs.id"),
    },
}


def position_column(dialect: str = "") -> Label[Any]:
    """The position as a column of a statement on ``jobs``, spelt for ``dialect``'s planner
    (the same numbers on every database)."""
    spelling = _SPELLINGS.get(dialect, _SPELLINGS[""])
    return literal_column(_POSITION_SQL.format(**spelling), Integer()).label("queue_position")


POSITION = position_column()


def position_of(job_id: Any) -> Select[Any]:
    """The queue position of one job (NULL unless queued), as a statement."""
    return select(POSITION).select_from(_JOBS).where(_JOBS.c.id == job_id)


# --- paused queues -----------------------------------------------------------------------


@dataclass(frozen=True)
class QueueState:
    """A queue as an admin sees it."""

    name: str
    paused_at: datetime | None
    paused_by: str | None
    queued: int
    running: int

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


def paused_queues(session: Session) -> set[str]:
    return set(session.scalars(select(QueuePause.queue)))


def is_paused(session: Session, queue: str) -> bool:
    return session.get(QueuePause, queue) is not None


def pause(session: Session, queue: str, by: str) -> bool:
    """Pause ``queue``; False when it already was. The caller commits.

    Its queued jobs are marked unpublished in the same transaction: a worker drops the
    messages they had (it claims nothing from a paused queue), and the dispatcher sends
    them again once the queue is resumed.
    """
    if is_paused(session, queue):
        return False
    session.add(QueuePause(queue=queue, paused_at=utcnow(), paused_by=by))
    session.execute(
        update(Job)
        .where(Job.status == QUEUED, Job.queue == queue)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
    return True


def resume(session: Session, queue: str) -> bool:
    """Resume ``queue``; False when it was not paused. The dispatcher's next pass
    publishes its waiting jobs. The caller commits."""
    result = session.execute(delete(QueuePause).where(QueuePause.queue == queue))
    return result.rowcount == 1


def unpublish(session: Session, job_id: str) -> None:
    """A message of a paused queue was dropped: its job, while still queued, waits for
    the dispatcher to publish it after the resume. The caller commits."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )


def queue_states(session: Session, names: list[str]) -> list[QueueState]:
    """Each named queue with its pause and how many jobs wait in it and run from it."""
    counts: dict[tuple[str, str], int] = {}
    rows = session.execute(
        select(Job.queue, Job.status, func.count())
        .where(Job.status.in_(sorted({QUEUED} | RUNNING)), Job.queue.in_(names))
        .group_by(Job.queue, Job.status)
    )
    for queue, status, count in rows:
        key = (queue, QUEUED if status == QUEUED else "running")
        counts[key] = counts.get(key, 0) + int(count)
    pauses = {p.queue: p for p in session.scalars(select(QueuePause))}
    return [
        QueueState(
            name,
            pauses[name].paused_at if name in pauses else None,
            pauses[name].paused_by if name in pauses else None,
            counts.get((name, QUEUED), 0),
            counts.get((name, "running"), 0),
        )
        for name in names
    ]
