"""Pause (#26): `jobs.pause_requested`, a pause asked of the worker that runs the job.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Like `cancel_requested`: the API sets it on a running job, the worker reads it with its heartbeat,
checkpoints at the next step boundary and releases the job as `paused` (a status, a string
already). Existing jobs were never asked, so the server default is false. Written to stand alone
(no imports from store/).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pause_requested", sa.Boolean(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pause_requested")
