"""The reads that select jobs by status, named once, so api/ and worker/ never spell a status filter.

Each says in its name what it is for; the statuses come from store/job_status.py (`ACTIVE`,
the table) and the conditions from store/job_predicates.py, so a new status (or a changed rule)
is picked up here and nowhere else. Counting a tenant's active jobs for its quota is
store/quotas.py `active_jobs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from store.job_predicates import claimable, fits, lease_lapsed, republishable
from store.job_status import ACTIVE, JobStatus
from store.models import Job, utcnow


def list_reclaimable(session: Session, *, queued_for_seconds: float, now: datetime | None = None,
                     limit: int = 100) -> list[str]:
    """Jobs to re-publish: a lapsed lease at once; one waiting unclaimed only after `queued_for_seconds`
    (its message may still be in the broker)."""
    now = now or utcnow()
    stale = or_(lease_lapsed(now), Job.updated_at < now - timedelta(seconds=queued_for_seconds))
    query = select(Job.id).where(republishable(now), stale).order_by(Job.id).limit(limit)
    return list(session.scalars(query))


def waiting_for_a_worker(session: Session, *, now: datetime | None = None) -> list[str]:
    """Queued jobs a claim would take: what a broker that lost its queue must be sent again."""
    query = select(Job.id).where(republishable(now or utcnow()), Job.status == JobStatus.QUEUED)
    return list(session.scalars(query.order_by(Job.id)))


def still_claimable(session: Session, *, job_id: str, max_gpus: int | None = None,
                    now: datetime | None = None) -> bool:
    """Whether a claim (store/jobs.py claim_job) would take the job now: one primary-key read. A
    worker's parent asks before it forks a job process for the job's message, so the message of a
    cancelled, finished or live-leased job, or one needing more than `max_gpus`, costs no process
    (the claim in that process still decides: this read only saves a fork)."""
    query = select(Job.id).where(Job.id == job_id, claimable(now or utcnow()), fits(max_gpus))
    return session.scalar(query) is not None


def still_queued(session: Session, job_ids: Iterable[str]) -> set[str]:
    """Those of `job_ids` still queued (not claimed, cancelled or settled since)."""
    return set(session.scalars(select(Job.id).where(Job.id.in_(list(job_ids)), Job.status == JobStatus.QUEUED)))


def active_job_using_file(session: Session, *, tenant_id: str, file_id: str) -> str | None:
    """An active job of the tenant training or validating on the file, if any (it must not be deleted)."""
    query = select(Job.id).where(Job.tenant_id == tenant_id, Job.status.in_(sorted(ACTIVE)),
                                 (Job.training_file == file_id) | (Job.validation_file == file_id))
    return session.scalars(query.limit(1)).first()


def fine_tuned_models(session: Session, *, tenant_id: str) -> list[Job]:
    """The tenant's succeeded jobs that have a model to serve (not deleted), oldest first."""
    query = select(Job).where(Job.tenant_id == tenant_id, Job.status == JobStatus.SUCCEEDED,
                              Job.fine_tuned_model.is_not(None), Job.model_deleted_at.is_(None))
    return list(session.scalars(query.order_by(Job.id)))


def with_status(status: JobStatus) -> ColumnElement[bool]:
    """The filter of a job list by one status (`GET /v1/fine_tuning/jobs?status=`)."""
    return Job.status == status
