"""Samples in the lease's progress buffer (issue #15): kept through an unreachable database and
written once it is back, each (step, index) once, the oldest dropped past the buffer's bound."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from store import jobs as job_store
from store.db import session_scope
from store.models import JobSample
from worker import lease as lease_module
from worker.lease import Lease


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _down(*_, **__):
    raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def _lease(service, **settings) -> Lease:
    settings = service.settings.model_copy(update={"lease_seconds": 120, **settings})
    job_id = service.create()
    with session_scope(settings) as session:
        job = job_store.claim_job(session, job_id=job_id, owner="host:1", lease_seconds=120)
    return Lease(settings, job_id, "host:1", job.attempt)


def _samples(step: int, count: int) -> list[dict]:
    return [{"step": step, "index": i, "line": i + 1, "prompt": f"p{i}", "expected": f"e{i}", "answer": f"a{i}@{step}"}
            for i in range(count)]


def _stored(service, job_id) -> list[tuple[int, int, str]]:
    with session_scope(service.settings) as session:
        rows = session.scalars(select(JobSample).where(JobSample.job_id == job_id)
                               .order_by(JobSample.step, JobSample.index)).all()
        return [(row.step, row.index, row.answer) for row in rows]


def test_samples_wait_out_an_outage_and_are_written_once(service, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(lease_module, "time", clock)
    lease = _lease(service, progress_buffer_events=5)
    lease.last_renewed = clock.now
    write = lease_module.write_progress
    monkeypatch.setattr(lease_module, "write_progress", _down)
    lease.record_samples(step=3, samples=_samples(3, 3))
    lease.record_samples(step=6, samples=_samples(6, 3))  # 6 buffered, 5 kept: step 3's index 0 goes
    assert lease.renew()  # the outage is shorter than the lease
    assert _stored(service, lease.job_id) == []
    monkeypatch.setattr(lease_module, "write_progress", write)
    clock.now += 10  # past the backoff: the next heartbeat tries again
    assert lease.renew()
    expected = [(3, 1, "a1@3"), (3, 2, "a2@3"), (6, 0, "a0@6"), (6, 1, "a1@6"), (6, 2, "a2@6")]
    assert _stored(service, lease.job_id) == expected
    lease.record_samples(step=6, samples=_samples(6, 3))  # a resumed attempt's evaluation of step 6 again
    assert lease.renew() and _stored(service, lease.job_id) == expected
