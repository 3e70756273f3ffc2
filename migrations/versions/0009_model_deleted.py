"""Deleted fine-tuned models: `jobs.model_deleted_at`, when `DELETE /v1/models/{id}` removed the job's model.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

The job row stays (its history: events, metrics, status) while its model, outputs and checkpoints
are gone; reads that name a model (GET /v1/models, completions, downloads) skip a job whose
model_deleted_at is set. Written to stand alone (no imports from store/).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model_deleted_at", sa.DateTime(timezone=False), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("model_deleted_at")
