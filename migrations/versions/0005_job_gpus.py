"""Multi-GPU jobs: `jobs.gpus`, how many GPUs (processes of one torch.distributed run) a job needs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

Existing jobs ran on one GPU, so the column's server default is 1. The queue a job is published
to follows from it (store/queue.py). Written to stand alone (no imports from store/).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gpus", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("gpus")
