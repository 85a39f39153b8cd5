"""sweeps: jobs.parent_id

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

A sweep's children record the id of the sweep (their parent job), indexed: the parent
and the dispatcher look its children up by it, and ``GET /api/v1/jobs?parent=`` filters
on it. No foreign key: a child outlives a deleted parent as an ordinary job. Jobs from
before this revision have none. Downgrading drops the column; a sweep still waiting for
its children then never hands itself over (cancel it first).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_jobs_parent_id", ["parent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_parent_id")
        batch_op.drop_column("parent_id")
