"""A worker's progress, written in one fenced transaction: heartbeat, metric points, events.

The worker buffers what a run reports (worker/lease.py) and writes it with its heartbeat, so a
database that was unreachable for a while gets everything once it is back. Writes are
idempotent, so a batch replayed after a commit whose answer was lost stores nothing twice:
a metric point replaces the row of its step (the (job_id, step) primary key), and an event
carries the id the worker gave it when it happened, and is skipped if that id is already there,
and a sample (a greedy answer at an evaluation) is skipped when its (job, step, index) is stored.
Like every worker write it is fenced by (lease_owner, attempt): an attempt that lost its lease
writes nothing, however much it buffered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from store.ids import new_id
from store.job_predicates import holds_lease
from store.job_status import Event
from store.jobs import _add_events
from store.models import Job, JobEvent, JobSample, MetricPoint, utcnow
from store.notify import job_changed


@dataclass(frozen=True)
class Heartbeat:
    held: bool  # False: the lease is gone (another attempt owns the job): stop at once
    cancel_requested: bool
    pause_requested: bool = False  # checkpoint at the step reached, then release the job paused


@dataclass(frozen=True)
class StepMetrics:
    step: int
    values: dict[str, Any]
    epoch: float | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class PendingEvent:
    """An event as it happened: its id (time-ordered) and time are given when it is made."""

    message: str
    level: str = "info"
    data: dict | None = None
    id: str = field(default_factory=lambda: new_id("event"))
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class PendingSample:
    """A greedy answer to a validation prompt at an evaluation (dora_core/training/samples.py)."""

    step: int
    index: int
    prompt: str
    expected: str
    answer: str
    id: str = field(default_factory=lambda: new_id("sample"))
    created_at: datetime = field(default_factory=utcnow)


# what a text column cannot hold (PostgreSQL: NUL; neither: a lone surrogate), which a model's
# decoded answer may contain
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def _text(value: str) -> str:
    return _NOT_TEXT.sub("\ufffd", value)


def write_progress(session: Session, *, job_id: str, owner: str, attempt: int, lease_seconds: float,
                   metrics: Sequence[StepMetrics] = (), events: Sequence[PendingEvent] = (),
                   samples: Sequence[PendingSample] = (),
                   resumed_from_step: int | None = None, step: int | None = None, total_steps: int | None = None,
                   epoch: float | None = None, now: datetime | None = None) -> Heartbeat:
    """Renew the lease, store the progress values given (None ones are left as they are) and `metrics`,
    `events` and `samples`, in one transaction, only for the lease's holder (Heartbeat.held False:
    nothing was written); report whether a cancel or a pause was asked. Commits."""
    now = now or utcnow()
    if step is None and metrics:
        step = max(point.step for point in metrics)
    progress = {"step": step, "total_steps": total_steps, "epoch": epoch, "resumed_from_step": resumed_from_step}
    renew = (update(Job).where(holds_lease(job_id, owner, attempt, Event.PROGRESS))
             .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now,
                     **{name: value for name, value in progress.items() if value is not None})
             .returning(Job.cancel_requested, Job.pause_requested))
    row = session.execute(renew, execution_options={"synchronize_session": False}).first()
    if row is None:
        session.rollback()
        return Heartbeat(held=False, cancel_requested=False)
    if metrics:
        steps = [point.step for point in metrics]
        session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step.in_(steps)))
        session.add_all([MetricPoint(job_id=job_id, step=p.step, epoch=p.epoch, values=p.values,
                                     created_at=p.created_at) for p in metrics])
        job_changed(session, job_id)
    if events:
        stored = set(session.scalars(select(JobEvent.id).where(JobEvent.id.in_([e.id for e in events]))))
        new = [JobEvent(id=e.id, job_id=job_id, message=e.message, level=e.level, type="message", data=e.data,
                        created_at=e.created_at) for e in events if e.id not in stored]
        if new:
            _add_events(session, job_id, *new)
    if samples:
        _add_samples(session, job_id, samples)
    session.commit()
    return Heartbeat(held=True, cancel_requested=bool(row[0]), pause_requested=bool(row[1]))


def _add_samples(session: Session, job_id: str, samples: Sequence[PendingSample]) -> None:
    """The samples whose (step, index) this job has not stored yet."""
    query = select(JobSample.step, JobSample.index).where(JobSample.job_id == job_id,
                                                          JobSample.step.in_({s.step for s in samples}))
    stored = {(step, index) for step, index in session.execute(query)}
    session.add_all([JobSample(id=s.id, job_id=job_id, step=s.step, index=s.index, prompt=_text(s.prompt),
                               expected=_text(s.expected), answer=_text(s.answer), created_at=s.created_at)
                     for s in samples if (s.step, s.index) not in stored])


def stored_samples(session: Session, *, job_id: str, up_to: int) -> list[tuple[int, int]]:
    """The (step, index) of this job's samples up to step `up_to`."""
    query = select(JobSample.step, JobSample.index).where(JobSample.job_id == job_id, JobSample.step <= up_to)
    return [(step, index) for step, index in session.execute(query)]


def stored_steps(session: Session, *, job_id: str, up_to: int) -> list[int]:
    """The steps up to `up_to` that have a metric point."""
    query = select(MetricPoint.step).where(MetricPoint.job_id == job_id, MetricPoint.step <= up_to)
    return list(session.scalars(query))
