"""job_files.attempt

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08

Which worker attempt wrote an output file. Each attempt writes under its own storage
prefix (jobs/<id>/attempt-<n>/), so a superseded worker's files never become the job's
outputs; NULL for inputs and for outputs written before this revision (at jobs/<id>/).
Downgrading drops the column, and code of revision 0002 looks for every file at
jobs/<id>/<name>, so outputs written since cannot be downloaded after a downgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_files", schema=None) as batch_op:
        batch_op.drop_column("attempt")
