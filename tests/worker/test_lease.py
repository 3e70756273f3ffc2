"""The lease's writes through an unreachable database, on a fake clock: how long it waits, what it
keeps meanwhile, and what it does past its bounds. (tests/worker/test_database_outages.py takes
a real PostgreSQL away; this is the arithmetic of the limits.)"""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from store import jobs as job_store
from store.db import session_scope
from store.models import JobEvent
from worker import lease as lease_module
from worker.lease import Lease


class FakeClock:
    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _down(*_, **__):
    raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(lease_module, "time", clock)
    return clock


def _lease(service, clock, **settings) -> Lease:
    settings = service.settings.model_copy(update={"lease_seconds": 120, **settings})
    job_id = service.create()
    with session_scope(settings) as session:
        job = job_store.claim_job(session, job_id=job_id, owner="host:1", lease_seconds=120)
    lease = Lease(settings, job_id, "host:1", job.attempt)
    lease.last_renewed = clock.now
    return lease


def _until(clock, seconds, function):
    """`function`, failing as an unreachable database until the clock has moved `seconds` on."""
    start = clock.now

    def call(*args, **kwargs):
        if clock.now - start < seconds:
            _down()
        return function(*args, **kwargs)

    return call


def test_the_final_status_waits_out_a_minute_long_outage_within_the_default_lease(service, clock, monkeypatch):
    lease = _lease(service, clock)
    monkeypatch.setattr(lease_module, "write_progress", _until(clock, 70, lease_module.write_progress))
    monkeypatch.setattr(job_store, "finish_job", _until(clock, 70, job_store.finish_job))
    monkeypatch.setattr(job_store, "trained_tokens_total", _until(clock, 70, job_store.trained_tokens_total))
    started = clock.now
    assert lease.trained_tokens() == 0
    assert lease.finish(job_store.JobStatus.SUCCEEDED, trained_tokens=0)
    assert clock.now - started >= 70 and max(clock.sleeps) <= lease_module.RETRY_MAX_SECONDS  # backoff, capped
    assert clock.sleeps[:4] == [0.5, 1.0, 2.0, 4.0]
    assert service.row(lease.job_id).status == "succeeded"


def test_past_most_of_the_lease_the_attempt_gives_up_without_writing(service, clock, monkeypatch):
    lease = _lease(service, clock)
    monkeypatch.setattr(job_store, "finish_job", _down)
    started = clock.now
    assert not lease.finish(job_store.JobStatus.SUCCEEDED, trained_tokens=0)
    assert not lease.held
    assert clock.now - started == pytest.approx(lease_module.LEASE_MARGIN * 120)  # 96 s: a minute and more
    row = service.row(lease.job_id)
    assert row.status == "running" and row.lease_owner == "host:1"  # the reconciler's, once the lease expires


def test_progress_is_buffered_up_to_its_bound_and_the_drop_is_said(service, clock, monkeypatch):
    lease = _lease(service, clock, progress_buffer_steps=5, progress_buffer_events=3)
    write = lease_module.write_progress
    monkeypatch.setattr(lease_module, "write_progress", _down)
    for step in range(1, 9):
        lease.record_metrics(step=step, values={"loss": 1.0 / step, "trained_tokens": 10}, epoch=None)
        assert lease.renew(step=step)  # still held: the outage is shorter than the lease
        clock.now += 1
    for n in range(5):
        lease.event(f"event {n}")
    assert service.steps(lease.job_id) == []
    monkeypatch.setattr(lease_module, "write_progress", write)
    clock.now += 10  # past the backoff: the next heartbeat tries again
    assert lease.renew()
    assert service.steps(lease.job_id) == [4, 5, 6, 7, 8]  # the newest 5 steps
    with session_scope(service.settings) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == lease.job_id).order_by(JobEvent.seq)).all()
    messages = [row.message for row in rows]
    assert [m for m in messages if m.startswith("event ")] == ["event 2", "event 3", "event 4"]
    notice = next(row for row in rows if row.message.startswith("The database was unreachable"))
    assert notice.level == "warning" and "the metrics of 3 steps (1-3) and 2 events were not kept" in notice.message
    assert lease.renew() and len(service.events(lease.job_id)) == len(messages)  # written once
