"""Evals (issue #24): `evals`, `eval_runs` and `eval_output_items`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

An eval holds its item schema and graders; a run is created queued by the API and executed by a
worker under a lease (like jobs); an output item is inserted once per (run, item index).
Written to stand alone (no imports from store/).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _id(name: str, **kwargs) -> sa.Column:
    """An OpenAI-shaped id; "C" collation on PostgreSQL so ids compare bytewise (cursors)."""
    return sa.Column(name, sa.String(40).with_variant(sa.String(40, collation="C"), "postgresql"), **kwargs)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "evals",
        _id("id"),
        _id("tenant_id", nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("data_source_config", sa.JSON(), nullable=False),
        sa.Column("testing_criteria", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_evals_tenant_id_tenants", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_evals"),
    )
    op.create_index("ix_evals_tenant_id_id", "evals", ["tenant_id", "id"])
    op.create_table(
        "eval_runs",
        _id("id"),
        _id("eval_id", nullable=False),
        _id("tenant_id", nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("data_source", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("result_counts", sa.JSON(), nullable=False),
        sa.Column("per_testing_criteria_results", sa.JSON(), nullable=False),
        sa.Column("per_model_usage", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        _ts("lease_expires_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.ForeignKeyConstraint(["eval_id"], ["evals.id"], name="fk_eval_runs_eval_id_evals", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_eval_runs_tenant_id_tenants",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_eval_runs"),
    )
    op.create_index("ix_eval_runs_eval_id_id", "eval_runs", ["eval_id", "id"])
    op.create_index("ix_eval_runs_tenant_id_status", "eval_runs", ["tenant_id", "status"])
    op.create_index("ix_eval_runs_status_lease_expires_at", "eval_runs", ["status", "lease_expires_at"])
    op.create_table(
        "eval_output_items",
        _id("id"),
        _id("run_id", nullable=False),
        _id("eval_id", nullable=False),
        _id("tenant_id", nullable=False),
        sa.Column("datasource_item_id", sa.Integer(), nullable=False),
        sa.Column("datasource_item", sa.JSON(), nullable=False),
        sa.Column("sample", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["run_id"], ["eval_runs.id"], name="fk_eval_output_items_run_id_eval_runs",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_eval_output_items"),
        sa.UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_id_datasource_item_id"),
    )
    op.create_index("ix_eval_output_items_run_id_id", "eval_output_items", ["run_id", "id"])


def downgrade() -> None:
    op.drop_table("eval_output_items")
    op.drop_table("eval_runs")
    op.drop_table("evals")
