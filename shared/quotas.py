"""Admission limits checked before a job is stored: per-owner active jobs, the global queue.

A count followed by an insert admits too many jobs when submits run side by side (each
counts before any inserts), so the count that decides is taken again under a lock held
until the insert commits (:func:`admit`): a per-owner advisory lock on PostgreSQL, the
database's single write lock (``BEGIN IMMEDIATE``) on SQLite. DELETE takes the same lock
(:func:`lock_owner`), so a predict job and the deletion of its model never interleave.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shared import states
from shared.errors import InputError
from shared.models import Job
from shared.settings import Settings

ACTIVE = sorted({states.QUEUED} | states.RUNNING)
# first key of our two-key advisory locks, so no other user of advisory locks collides
OWNER_LOCK_SPACE = 0x41544C52  # "ATLR"


def check_admission(
    session: Session, owner: str, settings: Settings, adding: int = 1, field: str | None = None
) -> None:
    """Raise 429 when the owner's active jobs plus ``adding`` exceed the limit, 503 when
    the queue cannot take ``adding`` more (a sweep adds its children and itself at once);
    ``field`` is what the refusal names.

    On its own this is only an early answer; :func:`admit` makes it binding.
    """
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.status.in_(ACTIVE))
    )
    if active + adding > settings.max_active_per_owner:
        limit = settings.max_active_per_owner
        message = (
            f"you already have {active} queued or running jobs (limit {limit}); "
            "wait for some to finish or cancel some"
            if adding == 1
            else f"this submit adds {adding} jobs to your {active} queued or running jobs, "
            f"over the limit of {limit}; submit fewer or wait for some jobs to finish"
        )
        raise InputError(message, field=field, status=429, code="quota_exceeded", retry_after=30)
    queued = session.scalar(
        select(func.count()).select_from(Job).where(Job.status == states.QUEUED)
    )
    if queued + adding > settings.max_queued_total:
        message = (
            f"the queue is full ({queued} jobs waiting); try again in a few minutes"
            if adding == 1
            else f"the queue has room for {max(0, settings.max_queued_total - queued)} more "
            f"jobs, this submit adds {adding}; try again in a few minutes"
        )
        raise InputError(message, field=field, status=503, code="queue_full", retry_after=120)


def lock_owner(session: Session, owner: str) -> None:
    """Hold, until this session's transaction ends, the lock that orders an owner's writes.

    PostgreSQL: a transaction-scoped advisory lock on the owner's name, so different
    owners never wait for each other. SQLite has one writer at a time anyway: the
    transaction becomes ``BEGIN IMMEDIATE``, taking that write lock now (waiting up to
    the busy timeout) instead of at its first write, so its reads cannot go stale.
    """
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(CAST(:space AS integer), hashtext(:owner))"),
            {"space": OWNER_LOCK_SPACE, "owner": owner},
        )
    elif dialect == "sqlite":
        _begin_immediate(session)


def _begin_immediate(session: Session) -> None:
    """Start the SQLite transaction as a writer, unless a write already started it.

    pysqlite opens a transaction only before its first INSERT/UPDATE/DELETE, so SELECTs
    before that ran outside of it and nothing is open yet: we open it ourselves.
    """
    connection = session.connection()
    dbapi = connection.connection.dbapi_connection
    if not dbapi.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def admit(
    session: Session, owner: str, settings: Settings, adding: int = 1, field: str | None = None
) -> None:
    """Lock the owner, then check the limits; the caller inserts and commits in the same
    transaction, so no other submit of this owner counts in between.

    The global queue cap is exact on SQLite (one writer) and on PostgreSQL exact within
    an owner; across owners it can be passed by the few submits that commit at the same
    instant, which a load-shedding cap tolerates (an exact one would serialize every
    submit of every owner).
    """
    lock_owner(session, owner)
    check_admission(session, owner, settings, adding, field)
