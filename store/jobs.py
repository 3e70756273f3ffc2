"""The job state machine's transitions: each function is one short transaction, SQL is the truth.

Which status an event may leave and reach, and who makes it, is the table in store/job_status.py
(drawn in docs/architecture.md); which rows it may change is said in SQL once, in
store/job_predicates.py, and each function here puts that predicate in the WHERE of one
conditional UPDATE: no row changed, nothing happened (someone else has the job, or it ended).
Statuses are `JobStatus` members (re-exported here), never string literals.

Execution is at-least-once delivery made effectively-once by a lease: `claim_job` is ONE
conditional UPDATE, and every later write by a worker is fenced by (lease_owner, attempt), so a
worker that lost its lease (paused, partitioned, presumed dead and replaced) cannot overwrite
the new attempt's work. A worker's progress (heartbeat, metrics, events) is store/progress.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from store.archive import tar_size
from store.ids import new_id
from store.job_predicates import (
    abandoned,
    cancel_requestable,
    cancellable,
    claimable,
    finish_status,
    fits,
    holds_lease,
    pausable,
    pause_asked,
    pause_requestable,
    release_status,
    republishable,
    resumable,
)
from store.job_status import ACTIVE, INITIAL, TERMINAL, Event, JobStatus, targets  # noqa: F401 - re-exported
from store.models import Artifact, Checkpoint, File, Job, JobEvent, MetricPoint, Tenant, utcnow
from store.notify import job_changed
from store.webhooks import checkpoint_event, job_event  # the webhook outbox, written in each transition


class InvalidTransition(Exception):  # noqa: N818 - named for the refused state change, like SQLAlchemy's NoResultFound
    """The job is not in a state that allows this (e.g. cancelling a finished job)."""


@dataclass(frozen=True)
class ArtifactSpec:
    """A finished output already written to storage under `storage_prefix`."""

    name: str  # "adapter", "merged", ...
    storage_prefix: str
    files: list[dict[str, Any]]  # [{"path": "adapter_config.json", "bytes": 123, "sha256": "..."}]
    sha256: str = ""  # filled from the file list when empty


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    param: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _event(job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None,
           now: datetime | None = None, seq: int | None = None) -> JobEvent:
    """An event row; `seq` is set by _add_events (or by create_job for a job's first events)."""
    return JobEvent(id=new_id("event"), job_id=job_id, message=message, level=level, type=type, data=data,
                    created_at=now or utcnow(), seq=seq)


def _add_events(session: Session, job_id: str, *events: JobEvent) -> None:
    """Number the job's new events and add them; streams are told at commit (store/notify.py).

    `jobs.event_seq` is bumped by an UPDATE, which holds the job row's lock until the commit, so
    a job's events are numbered in commit order: a reader that has seen seq n has seen every
    event before it, which event streams resume by. (Ids are time-ordered, but two processes'
    ids are not in commit order: clocks differ, and an id is made before its commit.)
    """
    statement = (update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + len(events))
                 .returning(Job.event_seq))
    last = session.execute(statement, execution_options={"synchronize_session": False}).scalar_one()
    for seq, event in enumerate(events, start=last - len(events) + 1):
        event.seq = seq
    session.add_all(events)
    job_changed(session, job_id)


def _changed(session: Session, statement) -> int:
    return session.execute(statement, execution_options={"synchronize_session": False}).rowcount


def _fenced_update(session: Session, event: Event, *, job_id: str, owner: str, attempt: int, **values: Any) -> bool:
    """UPDATE the job for `event` only while (owner, attempt) holds its lease; when no row changed
    (the lease is gone), roll back and return False, so the caller adds nothing more."""
    if _changed(session, update(Job).where(holds_lease(job_id, owner, attempt, event)).values(**values)) == 1:
        return True
    session.rollback()
    return False


def create_job(session: Session, *, tenant_id: str, model: str, training_file: str, validation_file: str | None,
               method: dict, settings: dict, seed: int, suffix: str | None, metadata: dict | None,
               max_attempts: int, idempotency_key: str | None = None, request_hash: str | None = None,
               gpus: int = 1) -> Job:
    """Insert a queued job and its first events; commits (IntegrityError on a reused idempotency key)."""
    now = utcnow()
    job = Job(id=new_id("job"), tenant_id=tenant_id, model=model, training_file=training_file,
              validation_file=validation_file, status=INITIAL, method=method, settings=settings, seed=seed,
              suffix=suffix, meta=metadata, max_attempts=max_attempts, idempotency_key=idempotency_key,
              request_hash=request_hash, gpus=gpus, created_at=now, updated_at=now, event_seq=2)
    session.add(job)
    session.flush()  # the job row first: events reference it
    # numbered here (no stream can watch a job before this commit, so no NOTIFY either)
    session.add_all([_event(job.id, f"Created fine-tuning job: {job.id}", now=now, seq=1),
                     _event(job.id, "Files validated, moving job to queued state", now=now, seq=2)])
    session.commit()
    return job


def claim_job(session: Session, *, job_id: str, owner: str, lease_seconds: float, max_gpus: int | None = None,
              now: datetime | None = None) -> Job | None:
    """Take the job for `owner` (queued, or running with an expired lease); None if no row changed.
    With `max_gpus`, a job needing more GPUs than that is not taken (a message in the wrong queue)."""
    now = now or utcnow()
    statement = (
        update(Job)
        .where(Job.id == job_id, claimable(now), fits(max_gpus))
        .values(status=JobStatus.RUNNING, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempt=Job.attempt + 1, started_at=func.coalesce(Job.started_at, now), attempt_started_at=now,
                updated_at=now)
    )
    if _changed(session, statement) != 1:
        session.rollback()
        return None
    job = session.get(Job, job_id, populate_existing=True)
    _add_events(session, job_id, _event(job_id, f"Attempt {job.attempt} of {job.max_attempts} started on {owner}",
                                        now=now))
    job_event(session, job, now=now)
    session.commit()
    return job


def add_checkpoint(session: Session, *, job_id: str, owner: str, attempt: int, step: int, storage_key: str,
                   metrics: dict | None = None) -> Checkpoint | None:
    """Register a checkpoint already written to storage; None without the lease."""
    now = utcnow()
    if not _fenced_update(session, Event.PROGRESS, job_id=job_id, owner=owner, attempt=attempt, updated_at=now):
        return None
    checkpoint = Checkpoint(id=new_id("checkpoint"), job_id=job_id, step=step, attempt=attempt,
                            storage_key=storage_key, metrics=metrics or {}, created_at=now)
    session.add(checkpoint)
    _add_events(session, job_id, _event(job_id, f"Checkpoint saved at step {step}", now=now))
    checkpoint_event(session, checkpoint, now=now)
    session.commit()
    return checkpoint


def status_of(session: Session, *, job_id: str) -> JobStatus:
    """The job's status now (after finish_job: what it wrote)."""
    return JobStatus(session.scalar(select(Job.status).where(Job.id == job_id)))


def latest_checkpoint(session: Session, *, job_id: str) -> Checkpoint | None:
    query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc(), Checkpoint.id.desc())
    return session.scalars(query.limit(1)).first()


def fine_tuned_model_name(*, model: str, tenant_name: str, suffix: str | None, job_id: str,
                          step: int | None = None) -> str:
    """OpenAI's shape: `ft:<base>:<org>:<suffix>:<short id>` (`:ckpt-step-<n>` for a checkpoint)."""
    name = f"ft:{model}:{tenant_name}:{suffix or ''}:{job_id.split('-', 1)[1][-8:]}"
    return name if step is None else f"{name}:ckpt-step-{step}"


def finish_job(session: Session, *, job_id: str, owner: str, attempt: int, status: JobStatus,
               error: JobError | None = None, trained_tokens: int | None = None,
               artifacts: list[ArtifactSpec] = ()) -> bool:
    """Write the final status and outputs, only while holding the lease; False when fenced off.

    A cancel asked before this write wins (store/job_predicates.py `finish_status`): the job
    ends cancelled, with no error and no outputs registered, whatever `status` says; the
    caller reads what was written (`status_of`) to remove the outputs it uploaded."""
    if status not in targets(Event.FINISH):
        raise ValueError(f"not a status a job finishes with: {status}")
    status = JobStatus(status)
    now = utcnow()
    values = dict(status=finish_status(status), finished_at=now, updated_at=now, lease_owner=None,
                  lease_expires_at=None, error=None, trained_tokens=trained_tokens)
    if not _fenced_update(session, Event.FINISH, job_id=job_id, owner=owner, attempt=attempt, **values):
        return False
    job = session.get(Job, job_id, populate_existing=True)
    status = JobStatus(job.status)  # what was written: cancelled if a cancel was asked
    if status == JobStatus.FAILED:
        job.error = _error_dict(error)
    if status == JobStatus.SUCCEEDED:
        tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == job.tenant_id))
        job.fine_tuned_model = fine_tuned_model_name(model=job.model, tenant_name=tenant_name,
                                                     suffix=job.suffix, job_id=job.id)
        job.result_files = [_add_artifact(session, job=job, spec=spec, now=now) for spec in artifacts]
    _add_events(session, job_id, _event(job_id, _final_message(status, error), now=now,
                                        level="error" if status == JobStatus.FAILED else "info"))
    job_event(session, job, now=now)
    session.commit()
    return True


def _error_dict(error: JobError | None) -> dict | None:
    if error is None:
        return None
    return {"code": error.code, "message": error.message, "param": error.param, **error.extra}


def _final_message(status: JobStatus, error: JobError | None) -> str:
    if status == JobStatus.SUCCEEDED:
        return "The job has successfully completed"
    if status == JobStatus.CANCELLED:
        return "The job was cancelled"
    return f"The job failed: {error.message if error else 'unknown error'}"


def _add_artifact(session: Session, *, job: Job, spec: ArtifactSpec, now: datetime) -> str:
    """One artifact row plus a `fine-tune-results` file (served as a tar); returns the file id."""
    files = sorted(spec.files, key=lambda f: f["path"])
    digest = spec.sha256 or hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    total = sum(int(f["bytes"]) for f in files)
    artifact = Artifact(id=new_id("artifact"), job_id=job.id, tenant_id=job.tenant_id, name=spec.name,
                        storage_prefix=spec.storage_prefix, files=files, bytes=total, sha256=digest, created_at=now)
    result = File(id=new_id("file"), tenant_id=job.tenant_id, filename=f"{job.id}-{spec.name}.tar",
                  purpose="fine-tune-results", bytes=0, status="processed", artifact_id=artifact.id, created_at=now)
    artifact.file_id = result.id
    result.bytes = tar_size(artifact)
    session.add_all([artifact, result])
    return result.id


def cancel_job(session: Session, *, job_id: str) -> Job:
    """queued -> cancelled now; running -> cancel requested (the worker stops and finishes it)."""
    now = utcnow()
    cancel = update(Job).where(Job.id == job_id, cancellable())
    if _changed(session, cancel.values(status=JobStatus.CANCELLED, finished_at=now, updated_at=now)) == 1:
        _add_events(session, job_id, _event(job_id, "The job was cancelled", now=now))
        job_event(session, session.get(Job, job_id, populate_existing=True), now=now)
    elif _changed(session, update(Job).where(Job.id == job_id, cancel_requestable())
                  .values(cancel_requested=True, updated_at=now)) == 1:
        _add_events(session, job_id, _event(job_id, "Cancellation requested; the job stops after its current step",
                                            now=now))
    job = session.get(Job, job_id, populate_existing=True)
    if job.status in TERMINAL - targets(Event.CANCEL):  # cancelling a cancelled job again is no error
        session.rollback()
        raise InvalidTransition(f"job {job_id} has already {job.status} and cannot be cancelled")
    session.commit()
    return job


def settle_abandoned(session: Session, *, now: datetime | None = None) -> list[str]:
    """Abandoned jobs (unattended, must not run again): cancel asked -> cancelled; pause asked -> paused (its
    worker died before it could pause it); at the attempt cap -> failed."""
    now = now or utcnow()
    ids = list(session.scalars(select(Job.id).where(abandoned(now))))
    settled = []
    for job_id in ids:
        job = session.get(Job, job_id)
        lost = "worker lost" if job.status == JobStatus.RUNNING else "given back"
        status, error = (JobStatus.CANCELLED, None) if job.cancel_requested else (
            (JobStatus.PAUSED, None) if job.pause_requested else (
                JobStatus.FAILED, {"code": "attempts_exhausted", "param": None,
                                   "message": f"the job did not finish after {job.attempt} attempts ({lost})"}))
        ended = {} if status == JobStatus.PAUSED else {"finished_at": now}  # a paused job may resume
        done = update(Job).where(Job.id == job_id, abandoned(now)).values(
            status=status, error=error, updated_at=now, lease_owner=None, lease_expires_at=None, pause_requested=False,
            **ended)
        if _changed(session, done) == 1:
            job = session.get(Job, job_id, populate_existing=True)
            _add_events(session, job_id, _paused_event(session, job, now=now) if status == JobStatus.PAUSED else
                        _event(job_id, _final_message(status, JobError(**error) if error else None),
                               level="error" if error else "info", now=now))
            job_event(session, session.get(Job, job_id, populate_existing=True), now=now)
            settled.append(job_id)
    session.commit()
    return settled


# -- used by worker/ (retries, the reconciler, totals) ------------------------------------------
def release_job(session: Session, *, job_id: str, owner: str, attempt: int, reason: str) -> bool:
    """Give a running job back to the queue for another attempt (fenced); False without the lease.

    For a failure that may not repeat (a worker shut down, a storage or database blip): the
    next attempt resumes from the newest checkpoint. `reason` is shown in the job's events.
    When a pause was asked, the job is released `paused` instead (the worker checkpointed the step it
    reached for it): it waits for a resume, and the attempt it used does not count against its
    cap (max_attempts grows by one), since nothing failed.
    """
    now = utcnow()
    values = dict(status=release_status(), pause_requested=False, lease_owner=None, lease_expires_at=None,
                  updated_at=now, max_attempts=case((pause_asked(), Job.max_attempts + 1), else_=Job.max_attempts))
    if not _fenced_update(session, Event.RELEASE, job_id=job_id, owner=owner, attempt=attempt, **values):
        return False
    job = session.get(Job, job_id, populate_existing=True)
    if job.status == JobStatus.PAUSED:
        _add_events(session, job_id, _paused_event(session, job, now=now))
    else:
        _add_events(session, job_id, _event(job_id, reason, level="warning", now=now))
    session.commit()
    return True


def _paused_event(session: Session, job: Job, *, now: datetime) -> JobEvent:
    """"Paused at step n": where the job stopped, and the checkpoint a resume continues from."""
    checkpoint = latest_checkpoint(session, job_id=job.id)
    since = f"from its checkpoint at step {checkpoint.step}" if checkpoint else "from the start (no checkpoint yet)"
    return _event(job.id, f"The job was paused at step {job.step}; a resume continues {since}", now=now,
                  data={"step": job.step, "checkpoint_step": checkpoint.step if checkpoint else None})


def pause_job(session: Session, *, job_id: str) -> Job:
    """queued -> paused now; running -> pause requested (its worker checkpoints at the next step
    boundary and releases the job paused). InvalidTransition, saying why, for any other job."""
    now = utcnow()
    pause = update(Job).where(Job.id == job_id, pausable())
    if _changed(session, pause.values(status=JobStatus.PAUSED, updated_at=now)) == 1:
        job = session.get(Job, job_id, populate_existing=True)
        _add_events(session, job_id, _paused_event(session, job, now=now))
    elif _changed(session, update(Job).where(Job.id == job_id, pause_requestable())
                  .values(pause_requested=True, updated_at=now)) == 1:
        _add_events(session, job_id, _event(job_id, "Pause requested; the job checkpoints at its next step boundary "
                                                    "and then pauses, freeing its GPU", now=now))
    else:
        job = session.get(Job, job_id, populate_existing=True)
        session.rollback()
        raise InvalidTransition(_why_not_paused(job))
    session.commit()
    return session.get(Job, job_id, populate_existing=True)


def _why_not_paused(job: Job) -> str:
    if job.status == JobStatus.PAUSED:
        return f"job {job.id} is already paused"
    if job.pause_requested:
        return f"a pause of job {job.id} was already requested; it pauses at its next step boundary"
    if job.cancel_requested:
        return f"job {job.id} is being cancelled and cannot be paused"
    return f"job {job.id} has already {job.status} and cannot be paused"


def resume_job(session: Session, *, job_id: str, commit: bool = True) -> Job:
    """paused -> queued: any worker claims it and resumes from its newest checkpoint (the caller
    publishes it after the commit). InvalidTransition for a job that is not paused."""
    now = utcnow()
    resume = update(Job).where(Job.id == job_id, resumable()).values(status=JobStatus.QUEUED, pause_requested=False,
                                                                     updated_at=now)
    if _changed(session, resume) != 1:
        job = session.get(Job, job_id, populate_existing=True)
        session.rollback()
        pending = "; its pause was requested and is not done yet" if job.pause_requested else ""
        raise InvalidTransition(f"job {job.id} is {job.status}, not paused{pending}: only a paused job can be "
                                "resumed")
    checkpoint = latest_checkpoint(session, job_id=job_id)
    since = f"its checkpoint at step {checkpoint.step}" if checkpoint else "the start"
    _add_events(session, job_id, _event(job_id, f"The job was resumed; it is queued and continues from {since}",
                                        now=now, data={"checkpoint_step": checkpoint.step if checkpoint else None}))
    if commit:
        session.commit()
    return session.get(Job, job_id, populate_existing=True)


def mark_republished(session: Session, *, job_id: str, not_since: datetime, now: datetime | None = None) -> bool:
    """Claim the right to re-publish a reclaimable job once (one conditional UPDATE of updated_at).

    Several reconcilers (one per worker host) may see the same stale job; only the one whose
    UPDATE changes the row publishes it, and the job is not published again before `not_since`
    has moved past the new updated_at.
    """
    now = now or utcnow()
    statement = (update(Job).where(Job.id == job_id, republishable(now), Job.updated_at < not_since)
                 .values(updated_at=now))
    changed = _changed(session, statement) == 1
    session.commit()
    return changed


def trained_tokens_total(session: Session, *, job_id: str) -> int:
    """Tokens trained on over every recorded step (each step once, whichever attempt ran it)."""
    values = session.scalars(select(MetricPoint.values).where(MetricPoint.job_id == job_id))
    return sum(int(v.get("trained_tokens") or 0) for v in values)


def checkpoint_keys(session: Session, *, job_id: str) -> list[tuple[int, str]]:
    """(step, storage_key) of the job's checkpoints, newest first."""
    query = select(Checkpoint.step, Checkpoint.storage_key).where(Checkpoint.job_id == job_id)
    return [(step, key) for step, key in session.execute(query.order_by(Checkpoint.step.desc(), Checkpoint.id.desc()))]
