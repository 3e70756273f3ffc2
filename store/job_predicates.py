"""The state machine's conditions in SQL: which job rows an event may change.

store/job_status.py says which statuses an event leaves (`sources`); these expressions add what
its actor needs of the lease and the event's own condition (the table's `when`), each written
once. Every transition function in store/jobs.py and store/progress.py puts one of them in the
WHERE of its conditional UPDATE, so a row the table does not allow is simply not changed.

The lease, by actor: the lease holder's writes are fenced by (lease_owner, attempt) (`holds_lease`);
a worker's claim and the reconciler act only on a job no live lease holds (`no_live_lease`); the
API's cancel ignores the lease. Times come from the callers' clocks (hosts need NTP); leases
are minutes, skew is seconds.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, or_, true

from store.job_status import Event, JobStatus, sources
from store.models import Job


def leaves(event: Event) -> ColumnElement[bool]:
    """`status IN (...)`: the statuses the table lets `event` leave."""
    return Job.status.in_(sorted(sources(event)))


def holds_lease(job_id: str, owner: str, attempt: int, event: Event) -> ColumnElement[bool]:
    """This (owner, attempt) holds the job's lease and `event` may leave its status: the fence
    on every write by a worker (a worker that lost its lease changes no row)."""
    return and_(Job.id == job_id, leaves(event), Job.lease_owner == owner, Job.attempt == attempt)


def lease_lapsed(now: datetime) -> ColumnElement[bool]:
    """A lease ran out: its worker died, hung or lost the database (NULL, no lease, is not lapsed)."""
    return Job.lease_expires_at < now


def no_live_lease(now: datetime) -> ColumnElement[bool]:
    """No attempt works on the job: never leased, given back or ended (no lease), or its lease lapsed."""
    return or_(Job.lease_expires_at.is_(None), lease_lapsed(now))


def may_run_again() -> ColumnElement[bool]:
    """Another attempt is allowed: attempts left, and neither a cancel nor a pause requested (a job
    whose worker died with a pause asked is settled paused, not claimed again)."""
    return and_(Job.attempt < Job.max_attempts, Job.cancel_requested.is_(False), Job.pause_requested.is_(False))


def claimable(now: datetime) -> ColumnElement[bool]:
    """What a claim takes: unleased, and allowed to run again."""
    return and_(leaves(Event.CLAIM), no_live_lease(now), may_run_again())


def fits(max_gpus: int | None) -> ColumnElement[bool]:
    """The job needs at most `max_gpus` GPUs (a worker with fewer drops its message; None: any)."""
    return Job.gpus <= max_gpus if max_gpus is not None else true()


def republishable(now: datetime) -> ColumnElement[bool]:
    """What the reconciler may publish again: what a claim would take."""
    return and_(leaves(Event.REPUBLISH), no_live_lease(now), may_run_again())


def abandoned(now: datetime) -> ColumnElement[bool]:
    """Unleased but never to run again (at the attempt cap, or cancel asked): to be settled.

    Besides lapsed leases, this is a job its last attempt gave back (a worker shut down during
    attempt N of N) or one given back after a cancel request: no claim would ever take it."""
    return and_(leaves(Event.SETTLE), no_live_lease(now), ~may_run_again())


def cancel_asked() -> ColumnElement[bool]:
    """A user asked to cancel the job while a worker had it (the API answered 200, `running`)."""
    return Job.cancel_requested.is_(True)


def finish_status(status: JobStatus) -> ColumnElement[str]:
    """The status a finish writes for `status`: cancelled when a cancel was asked before it.

    The API accepted that cancel while the job ran, so it must take effect: succeeded or failed
    only with no cancel asked (the table's condition). Evaluated in the finish's UPDATE itself, so
    a cancel committed just before it is seen (on PostgreSQL the UPDATE waits for the cancel's row
    lock and re-reads the row), and a cancel just after it finds the job ended (409)."""
    return case((cancel_asked(), JobStatus.CANCELLED.value), else_=JobStatus(status).value)


def pause_asked() -> ColumnElement[bool]:
    """A user asked to pause the job while a worker had it (the API answered 200, `running`)."""
    return Job.pause_requested.is_(True)


def release_status() -> ColumnElement[str]:
    """The status a release writes: paused when a pause was asked (the worker checkpointed the step
    it reached for it), else queued for another attempt. In the UPDATE itself, like finish_status."""
    return case((pause_asked(), JobStatus.PAUSED.value), else_=JobStatus.QUEUED.value)


def pausable() -> ColumnElement[bool]:
    """Paused at once: no worker has it."""
    return leaves(Event.PAUSE)


def pause_requestable() -> ColumnElement[bool]:
    """A worker has it: the pause is asked of it (once, and not of a job being cancelled)."""
    return and_(leaves(Event.REQUEST_PAUSE), Job.pause_requested.is_(False), Job.cancel_requested.is_(False))


def resumable() -> ColumnElement[bool]:
    return leaves(Event.RESUME)


def cancellable() -> ColumnElement[bool]:
    """Cancelled at once: no worker has it."""
    return leaves(Event.CANCEL)


def cancel_requestable() -> ColumnElement[bool]:
    """A worker has it: the cancel is asked of it (once)."""
    return and_(leaves(Event.REQUEST_CANCEL), Job.cancel_requested.is_(False))
