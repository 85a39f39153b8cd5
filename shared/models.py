"""SQLAlchemy 2.0 models: the job row is the source of truth for every job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.timeutil import utcnow

# Stable constraint names keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, returns aware UTC: SQLite has no time zones, PostgreSQL does."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One submitted unit of work and everything clients poll about it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(128), default="local")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    progress_current: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_stage: Mapped[str | None] = mapped_column(String(64))
    progress_loss: Mapped[float | None] = mapped_column()
    eta_seconds: Mapped[float | None] = mapped_column()
    preview_step: Mapped[int | None] = mapped_column(Integer)
    # kind-specific live numbers (epoch, accuracy…) and a bounded series for curves
    progress_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    progress_history: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[str | None] = mapped_column(String(64))

    # fair queues (shared/fairness.py): 0-9, higher first; the queue its kind runs on,
    # recorded at submit so the claim and the queue position filter on one column
    priority: Mapped[int] = mapped_column(Integer, default=5, server_default="5")
    queue: Mapped[str | None] = mapped_column(String(32))
    # a sweep's child records its sweep (shared/kinds/sweep.py); NULL for every other job
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)

    files: Mapped[list[JobFile]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobFile.id"
    )

    __table_args__ = (
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status_created", "status", "created_at"),
        # the claim's choice and the queue position: queued jobs of a queue by priority,
        # grouped by owner, oldest first
        Index("ix_jobs_fair_order", "status", "queue", "priority", "owner", "created_at"),
        # an owner's last start on a queue: who has waited longest for a turn
        Index("ix_jobs_owner_served", "owner", "queue", "started_at"),
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )


class JobFile(Base):
    """A file in storage that belongs to a job: an input, a result or a preview."""

    __tablename__ = "job_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the worker attempt that wrote an output (stored under jobs/<id>/attempt-<n>/);
    # NULL for inputs, which the web stores at jobs/<id>/<name>
    attempt: Mapped[int | None] = mapped_column(Integer)

    job: Mapped[Job] = relationship(back_populates="files")

    __table_args__ = (UniqueConstraint("job_id", "name"),)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, so a database leak reveals no token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class QueuePause(Base):
    """A paused queue: its jobs stay ``queued`` and no worker claims them until resumed.

    In the database rather than Redis: the claim that must respect it reads the same
    database, and a Redis restarted without persistence would otherwise resume every
    paused queue by itself.
    """

    __tablename__ = "queue_pauses"

    queue: Mapped[str] = mapped_column(String(32), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    paused_by: Mapped[str] = mapped_column(String(128))
