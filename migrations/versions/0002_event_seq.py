"""Job events numbered per job in commit order: `job_events.seq` and the counter `jobs.event_seq`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05

Event streams (`GET .../events?stream=true`) resume after the last event a client saw; an event
id is time-ordered but, across processes, not commit-ordered, so they resume by `seq`, which
store/jobs.py assigns under the job row's lock. Existing events are numbered in id order.
Written to stand alone (no imports from store/).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("event_seq", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("job_events", sa.Column("seq", sa.Integer(), nullable=True))
    op.execute("UPDATE job_events SET seq = (SELECT count(*) FROM job_events AS earlier "
               "WHERE earlier.job_id = job_events.job_id AND earlier.id <= job_events.id)")
    op.execute("UPDATE jobs SET event_seq = (SELECT count(*) FROM job_events WHERE job_events.job_id = jobs.id)")
    with op.batch_alter_table("job_events") as batch:  # SQLite: the table is rebuilt, NOT NULL added
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.create_index("ix_job_events_job_id_seq", ["job_id", "seq"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.drop_index("ix_job_events_job_id_seq")
        batch.drop_column("seq")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("event_seq")
