"""Signed webhooks: `webhooks`, their outbox `webhook_deliveries` and every `webhook_attempts` row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

A delivery row is written in the same transaction as the job transition it reports
(store/webhooks.py), so an event is delivered at least once; attempts record each HTTP try.
Written to stand alone (no imports from store/).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _id(name: str, **kwargs) -> sa.Column:
    """An OpenAI-shaped id; "C" collation on PostgreSQL so ids compare bytewise (cursors)."""
    return sa.Column(name, sa.String(40).with_variant(sa.String(40, collation="C"), "postgresql"), **kwargs)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "webhooks",
        _id("id"),
        _id("tenant_id", nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_webhooks_tenant_id_tenants",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
    )
    op.create_index("ix_webhooks_tenant_id_id", "webhooks", ["tenant_id", "id"])
    op.create_table(
        "webhook_deliveries",
        _id("id"),
        _id("webhook_id", nullable=False),
        _id("event_id", nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        _id("job_id", nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at", nullable=True),
        _ts("published_at", nullable=True),
        _ts("created_at"),
        _ts("finished_at", nullable=True),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhooks.id"], name="fk_webhook_deliveries_webhook_id_webhooks",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_webhook_id_id", "webhook_deliveries", ["webhook_id", "id"])
    op.create_index("ix_webhook_deliveries_status_next_attempt_at", "webhook_deliveries",
                    ["status", "next_attempt_at"])
    op.create_table(
        "webhook_attempts",
        _id("id"),
        _id("delivery_id", nullable=False),
        _ts("attempted_at"),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"],
                                name="fk_webhook_attempts_delivery_id_webhook_deliveries", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_attempts"),
    )
    op.create_index("ix_webhook_attempts_delivery_id_id", "webhook_attempts", ["delivery_id", "id"])


def downgrade() -> None:
    for table in ("webhook_attempts", "webhook_deliveries", "webhooks"):
        op.drop_table(table)
