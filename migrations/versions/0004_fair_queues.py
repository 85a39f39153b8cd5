"""fair queues: jobs.priority, jobs.queue, queue_pauses

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A job's priority (0-9, default 5) and the queue its kind runs on, with the two indexes
the fair claim reads (shared/fairness.py), and the table of paused queues. Jobs queued
before this revision get the queue of their kind when it is a built-in one (all run on
``gpu``); a job of a deployment's own kind keeps NULL and runs when its own message is
taken. Downgrading drops the columns and the table: jobs are then served oldest first
again and a paused queue is resumed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BUILT_IN_KINDS = ("style_transfer", "fine_tune", "predict")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="5", nullable=False))
        batch_op.add_column(sa.Column("queue", sa.String(length=32), nullable=True))
        batch_op.create_index(
            "ix_jobs_fair_order",
            ["status", "queue", "priority", "owner", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_jobs_owner_served", ["owner", "queue", "started_at"], unique=False
        )
    jobs = sa.table("jobs", sa.column("kind", sa.String), sa.column("queue", sa.String))
    op.execute(jobs.update().where(jobs.c.kind.in_(BUILT_IN_KINDS)).values(queue="gpu"))
    op.create_table(
        "queue_pauses",
        sa.Column("queue", sa.String(length=32), nullable=False),
        sa.Column("paused_at", sa.DateTime(), nullable=False),
        sa.Column("paused_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("queue", name=op.f("pk_queue_pauses")),
    )


def downgrade() -> None:
    op.drop_table("queue_pauses")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_owner_served")
        batch_op.drop_index("ix_jobs_fair_order")
        batch_op.drop_column("queue")
        batch_op.drop_column("priority")
