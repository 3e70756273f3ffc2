"""What a tenant's caps count, and the lock that makes a check and the insert it allows one step.

A cap checked with a plain count races: two creates at N-1 both count N-1 and both insert.
`lock_tenant` takes a write lock on the tenant's row first, inside the transaction that then
counts and inserts, so a second check of the same tenant waits until the first one committed
(or rolled back) and counts what it inserted. On PostgreSQL that is `SELECT ... FOR UPDATE` on
the row (other tenants are not held up); SQLite has one writer at a time, and a no-op UPDATE
as the transaction's first statement makes it that writer (waiting on the busy timeout) before
anything is counted, so the count is never of a stale snapshot.

The lock is held for one count and one insert; nothing slow (an upload to storage, a broker)
happens while it is held.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store.ids import PREFIXES, _encode
from store.job_status import COUNTED_AS_ACTIVE
from store.models import File, Job, Tenant


def lock_tenant(session: Session, *, tenant_id: str) -> None:
    """Hold the tenant's row until the session's transaction ends (commit or rollback)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name),
                        execution_options={"synchronize_session": False})
    else:
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def active_jobs(session: Session, *, tenant_id: str) -> int:
    """The tenant's queued and running jobs (a paused one holds no GPU: not counted, and resuming it
    is checked against the cap like creating a job)."""
    query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id,
                                                        Job.status.in_(sorted(COUNTED_AS_ACTIVE)))
    return int(session.scalar(query) or 0)


def jobs_created_since(session: Session, *, tenant_id: str, since: datetime) -> tuple[int, datetime | None]:
    """(jobs the tenant created since `since`, whatever their status, cancelled ones included; when
    the oldest of them was created). Job ids sort by creation time (store/ids.py), so the count
    reads the (tenant_id, id) index from the tenant's jobs of the window onwards."""
    # the smallest id made a second before `since` (an id begins with its milliseconds): an index
    # range, with margin for the id and created_at being read from the clock one after the other
    first_id = PREFIXES["job"] + _encode(int((since - timedelta(seconds=1)).timestamp() * 1000), 10)
    query = select(func.count(), func.min(Job.created_at)).where(Job.tenant_id == tenant_id, Job.id >= first_id,
                                                                 Job.created_at >= since)
    count, oldest = session.execute(query).one()
    return int(count or 0), oldest


def stored_bytes(session: Session, *, tenant_id: str) -> int:
    """Bytes of the tenant's files: those it uploaded and its jobs' results (`fine-tune-results`,
    each an artifact's tar size). Results count because the tenant can free them: deleting the
    model (`DELETE /v1/models/{id}`, store/model_deletion.py) removes them. A job is never refused
    or stopped for storage, so its results may take a tenant over the cap; uploads are then
    refused until it deletes files or models. Checkpoints are not counted: their sizes are not
    kept in rows, at most `keep_checkpoints` of a job are stored, and they go with the model."""
    query = select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)
    return int(session.scalar(query) or 0)
