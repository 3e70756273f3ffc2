"""Samples in the lease's progress buffer (issue #15): kept through an unreachable database and
written once it is back, each (step, index) once, the oldest dropped past the buffer's bound."""

from __future__ import annotations

import json

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


def test_a_resumed_attempt_restores_the_samples_sql_lacks_from_this_hosts_run(service, tmp_path):
    """An earlier attempt here buffered samples through an outage and lost its lease: the next one,
    resuming from the checkpoint at step 4, stores those up to step 4 that SQL lacks, once."""
    from store.progress import PendingSample, write_progress
    from store.storage import open_storage
    from worker.progress import JobProgress

    lease = _lease(service)
    with session_scope(service.settings) as session:
        write_progress(session, job_id=lease.job_id, owner=lease.owner, attempt=lease.attempt, lease_seconds=120,
                       samples=[PendingSample(step=2, index=0, prompt="p0", expected="e0", answer="stored")])
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for step in (2, 4, 6)
                                                    for s in _samples(step, 2)))
    progress = JobProgress(lease=lease, storage=open_storage(service.settings.storage_url), tenant_id="t",
                           heartbeat_seconds=1, keep_checkpoints=2, metrics_file=tmp_path / "metrics.jsonl")
    progress.on_resume(step=4)
    progress.on_start(total_steps=8, start_step=4, report={})
    assert _stored(service, lease.job_id) == [(2, 0, "stored"), (2, 1, "a1@2"), (4, 0, "a0@4"), (4, 1, "a1@4")]
