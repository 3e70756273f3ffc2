"""Samples: the model's greedy answers to validation prompts at each evaluation, `job_samples`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

Written by the worker with its progress (store/progress.py), once per (job, step, index), and
listed at `GET /v1/fine_tuning/jobs/{id}/samples`. Written to stand alone (no imports from store/).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _id(name: str, **kwargs) -> sa.Column:
    """An OpenAI-shaped id; "C" collation on PostgreSQL so ids compare bytewise (cursors)."""
    return sa.Column(name, sa.String(40).with_variant(sa.String(40, collation="C"), "postgresql"), **kwargs)


def upgrade() -> None:
    op.create_table(
        "job_samples",
        _id("id"),
        _id("job_id", nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("expected", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_samples_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_job_samples"),
        sa.UniqueConstraint("job_id", "step", "sample_index", name="uq_job_samples_job_id_step_sample_index"),
    )


def downgrade() -> None:
    op.drop_table("job_samples")
