"""Telling API processes that a job changed: PostgreSQL NOTIFY on one channel, payload the job id.

store/jobs.py calls `job_changed` in the transaction that writes a job's events (which every
status change writes too) or a metric point, so whatever writes them (a worker, the
reconciler, an API process) wakes the event streams of every API process (api/streams.py
LISTENs on `CHANNEL`). A NOTIFY is transactional: it is delivered at commit, when the rows are
already visible, and never for a transaction that rolled back. On SQLite this does nothing:
there streams poll.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

CHANNEL = "dora_job_changes"


def job_changed(session: Session, job_id: str) -> None:
    """NOTIFY `CHANNEL` with the job id when this transaction commits (PostgreSQL only)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, job_id)))
