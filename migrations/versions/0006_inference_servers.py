"""Inference servers: `inference_servers`, the `dora serve` processes and their heartbeats.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Each server upserts its row every few seconds (store/inference_servers.py); the API reads the
live rows to route a completion. Written to stand alone (no imports from store/).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inference_servers",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("base_models", sa.JSON(), nullable=False),
        sa.Column("max_batch", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inference_servers"),
    )
    op.create_index("ix_inference_servers_heartbeat_at", "inference_servers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_inference_servers_heartbeat_at", table_name="inference_servers")
    op.drop_table("inference_servers")
