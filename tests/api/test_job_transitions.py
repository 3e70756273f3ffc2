"""Every transition function against the state machine's table (store/job_status.py), on SQLite
and PostgreSQL.

For each function and each status, a job is put in that status with the lease its actor needs
and its condition true, and the function is called: it must change the row iff the table has a
row for (status, event), and leave it in a status the table lists. A new status or row is
checked here with no new test; a new event needs its function in CASES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from store import jobs as job_store
from store.db import session_scope
from store.job_status import (
    ACTIVE,
    INITIAL,
    TERMINAL,
    TRANSITIONS,
    Actor,
    Event,
    JobStatus,
    actor,
    diagram,
    sources,
    targets,
)
from store.models import Job, utcnow
from store.progress import write_progress

OWNER, ATTEMPT, MAX_ATTEMPTS = "holder:1", 1, 3
ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


@dataclass(frozen=True)
class Case:
    """A transition function called for `events`; `call(session, job_id)` makes the call.
    `target`: the status it must lead to, where the function (or the condition set up) chooses one."""

    name: str
    events: tuple[Event, ...]
    call: Callable
    target: JobStatus | None = None
    setup: dict = field(default_factory=dict)  # the event's condition, in columns


def _cancel(session, job_id):
    try:
        job_store.cancel_job(session, job_id=job_id)
    except job_store.InvalidTransition:
        pass  # an ended job: refused, and nothing changed


def _pause(session, job_id):
    try:
        job_store.pause_job(session, job_id=job_id)
    except job_store.InvalidTransition:
        pass  # not pausable: refused, and nothing changed


def _resume(session, job_id):
    try:
        job_store.resume_job(session, job_id=job_id)
    except job_store.InvalidTransition:
        pass


def _release(session, job_id):
    return job_store.release_job(session, job_id=job_id, owner=OWNER, attempt=ATTEMPT, reason="given back")


def _finish(status):
    return lambda session, job_id: job_store.finish_job(session, job_id=job_id, owner=OWNER, attempt=ATTEMPT,
                                                        status=status)


CASES = (
    Case("claim_job", (Event.CLAIM,),
         lambda session, job_id: job_store.claim_job(session, job_id=job_id, owner="new:2", lease_seconds=60)),
    Case("write_progress", (Event.PROGRESS,),
         lambda session, job_id: write_progress(session, job_id=job_id, owner=OWNER, attempt=ATTEMPT,
                                                lease_seconds=60, step=7)),
    Case("add_checkpoint", (Event.PROGRESS,),
         lambda session, job_id: job_store.add_checkpoint(session, job_id=job_id, owner=OWNER, attempt=ATTEMPT,
                                                          step=7, storage_key="ckpt/7")),
    *(Case(f"finish_job-{status}", (Event.FINISH,), _finish(status), target=status)
      for status in sorted(targets(Event.FINISH))),
    # a cancel the API accepted while the job ran wins over the worker's last write (N9)
    *(Case(f"finish_job-{status}-cancel-asked", (Event.FINISH,), _finish(status), target=JobStatus.CANCELLED,
           setup={"cancel_requested": True}) for status in sorted(targets(Event.FINISH) - {JobStatus.CANCELLED})),
    Case("release_job", (Event.RELEASE,), _release, target=JobStatus.QUEUED),
    Case("release_job-pause-asked", (Event.RELEASE,), _release, target=JobStatus.PAUSED,
         setup={"pause_requested": True}),
    Case("cancel_job", (Event.CANCEL, Event.REQUEST_CANCEL), _cancel),
    Case("pause_job", (Event.PAUSE, Event.REQUEST_PAUSE), _pause),
    Case("resume_job", (Event.RESUME,), _resume, target=JobStatus.QUEUED),
    Case("mark_republished", (Event.REPUBLISH,),
         lambda session, job_id: job_store.mark_republished(session, job_id=job_id,
                                                            not_since=utcnow() - timedelta(minutes=1))),
    Case("settle_abandoned-at-cap", (Event.SETTLE,), lambda session, _: job_store.settle_abandoned(session),
         target=JobStatus.FAILED, setup={"attempt": MAX_ATTEMPTS}),
    Case("settle_abandoned-cancel-asked", (Event.SETTLE,), lambda session, _: job_store.settle_abandoned(session),
         target=JobStatus.CANCELLED, setup={"cancel_requested": True}),
    Case("settle_abandoned-pause-asked", (Event.SETTLE,), lambda session, _: job_store.settle_abandoned(session),
         target=JobStatus.PAUSED, setup={"pause_requested": True}),
)


def _lease(by: Actor, *, right: bool) -> dict:
    """The lease columns `by` needs (right) or that must stop it (not right)."""
    live, lapsed = utcnow() + timedelta(minutes=10), utcnow() - timedelta(minutes=10)
    if by == Actor.LEASE_HOLDER:
        return {"lease_owner": OWNER if right else "other:9", "lease_expires_at": live}
    if by in (Actor.WORKER, Actor.RECONCILER):
        return {"lease_owner": "gone:0", "lease_expires_at": lapsed if right else live}
    return {"lease_owner": "busy:3", "lease_expires_at": live}  # the API: whatever the lease


def _job_in(settings, tenant, status: JobStatus, **columns) -> str:
    """A job forced into `status` with `columns` (an hour since its last change)."""
    with session_scope(settings) as session:
        job_id = job_store.create_job(session, tenant_id=tenant.tenant_id, model="tiny-llama", training_file="file-x",
                                      validation_file=None, method={}, settings={}, seed=0, suffix=None,
                                      metadata=None, max_attempts=MAX_ATTEMPTS).id
        values = {"status": status, "attempt": ATTEMPT, "cancel_requested": False, "pause_requested": False,
                  "updated_at": utcnow() - timedelta(hours=1)} | columns
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()
    return job_id


def _row(settings, job_id: str) -> tuple:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        return (job.status, job.lease_owner, job.lease_expires_at, job.attempt, job.cancel_requested,
                job.pause_requested, job.updated_at, job.step)


def _call(settings, case: Case, job_id: str) -> None:
    with session_scope(settings) as session:
        case.call(session, job_id)


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_function_changes_a_row_iff_the_table_allows_it(settings, tenant, case, status):
    (by,) = {actor(event) for event in case.events}
    job_id = _job_in(settings, tenant, status, **_lease(by, right=True), **case.setup)
    before = _row(settings, job_id)
    _call(settings, case, job_id)
    after = _row(settings, job_id)
    allowed = [event for event in case.events if status in sources(event)]
    if not allowed:
        assert after == before, f"{case.name} changed a {status} job, which the table does not allow"
        return
    assert after != before, f"{case.name} left a {status} job alone, which the table allows to change"
    reached = JobStatus(after[0])
    assert reached in targets(allowed[0], status), f"{case.name}: {status} -> {reached} is not in the table"
    assert case.target in (None, reached)


@pytest.mark.parametrize("case", [case for case in CASES if actor(case.events[0]) != Actor.API],
                         ids=lambda case: case.name)
def test_the_lease_is_what_the_actor_needs(settings, tenant, case):
    """A status the event may leave, but the lease wrong for its actor: nothing changes (a live
    lease stops a claim, a republish and a settle; another attempt's lease stops its holder's writes)."""
    for status in sorted(sources(case.events[0])):
        job_id = _job_in(settings, tenant, status, **_lease(actor(case.events[0]), right=False), **case.setup)
        before = _row(settings, job_id)
        _call(settings, case, job_id)
        assert _row(settings, job_id) == before, f"{case.name} changed a {status} job without the lease it needs"


def test_every_event_has_a_function_checked_above():
    assert {event for case in CASES for event in case.events} == set(Event)


def test_the_table_is_one_machine():
    """One actor per event (the actor says the lease fence), every status reachable from the
    first, and the ended ones are exactly those nothing leaves."""
    assert all(actor(event) for event in Event)
    reached, frontier = {INITIAL}, [INITIAL]
    while frontier:
        status = frontier.pop()
        for row in TRANSITIONS:
            new = set(row.targets) - reached if status in row.sources else set()
            reached |= new
            frontier += new
    assert reached == set(JobStatus)
    assert TERMINAL == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    assert ACTIVE | TERMINAL == set(JobStatus) and not ACTIVE & TERMINAL


def test_the_architecture_doc_draws_the_table():
    """docs/architecture.md holds the one drawing of the state machine, generated from the table
    (`python -m store.job_status` prints it)."""
    assert f"```mermaid\n{diagram()}```" in ARCHITECTURE.read_text()
