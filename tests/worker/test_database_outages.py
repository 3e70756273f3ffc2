"""The worker through a PostgreSQL outage: progress kept and written once, the end of a run waited
out within the lease, and the fence kept when another attempt took the job meanwhile.

`run_job` runs in a thread of the test process against real PostgreSQL reached through a TCP
proxy the test controls (tests/support/tcp_proxy.py; `refuse` is a database that is down). The
jobs are created through the API on a direct connection, so only the worker sees the outage.
The outage starts and ends at given training steps (a wrapper around `JobProgress.on_step`),
so what it covers does not depend on how fast this machine trains.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from dora_cli.process_settings import AllSettings
from store.db import session_scope
from store.migrate import upgrade
from store.models import Artifact, Job, MetricPoint
from store.tenants import create_api_key
from tests.support.api_client import recording_app
from tests.support.jobs import dora_method, wait_for
from tests.support.services import postgres_database
from tests.support.tcp_proxy import tcp_proxy
from tests.support.worker_service import Service
from worker.job import run_job
from worker.progress import JobProgress
from worker.settings import WorkerSettings


@pytest.fixture(scope="module")
def postgres(tmp_path_factory, tiny_model_dir):
    """(settings on a direct connection, the proxy in front of the same database)."""
    root = tmp_path_factory.mktemp("pg-worker")
    with postgres_database() as url:
        direct = AllSettings(database_url=url, storage_url=str(root / "artifacts"),
                                broker_url="redis://127.0.0.1:1/0", base_models={"tiny-llama": str(tiny_model_dir)},
                                work_dir=str(root / "work"), lease_seconds=30, heartbeat_seconds=1,
                                requeue_after_seconds=5, auth_cache_seconds=0.0, device="cpu",
                                db_connect_timeout_seconds=2, db_statement_timeout_seconds=5.0,
                                db_pool_timeout_seconds=2.0)
        upgrade(direct)
        parsed = make_url(url)
        with tcp_proxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
            yield direct, proxy


@pytest.fixture
def pg(postgres):
    """A tenant's service on the direct connection, and worker settings through the proxy."""
    direct, proxy = postgres
    app = recording_app(direct)
    with session_scope(direct) as session:
        key = create_api_key(session, tenant_name=f"t-{uuid.uuid4().hex[:10]}").key
    through = make_url(direct.database_url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    with TestClient(app) as client:
        service = Service(client=client, settings=direct, headers={"Authorization": f"Bearer {key}"})
        try:
            yield service, direct.model_copy(update={"database_url": through}), proxy
        finally:
            proxy.set_mode("forward")


class Outage:
    """Refuse the database from the start of step `begin` (before its metrics are written) until
    the start of step `end`, or for `seconds` after it began."""

    def __init__(self, proxy, *, begin: int, end: int | None = None, seconds: float | None = None,
                 during=None) -> None:
        self.proxy, self.begin, self.end, self.seconds, self.during = proxy, begin, end, seconds, during
        self.began = self.ended = None

    def install(self, monkeypatch) -> Outage:
        original = JobProgress.on_step

        def on_step(progress, metrics):
            self.at_step(metrics["step"])
            return original(progress, metrics)

        monkeypatch.setattr(JobProgress, "on_step", on_step)
        return self

    def at_step(self, step: int) -> None:
        if step == self.begin and self.began is None:
            self.proxy.set_mode("refuse")
            self.began = time.monotonic()
            if self.seconds is not None:
                threading.Timer(self.seconds, self.finish).start()
        elif step == self.end:
            self.finish()

    def finish(self) -> None:
        if self.during is not None:
            self.during()
        self.proxy.set_mode("forward")
        self.ended = time.monotonic()


def _run(job_id: str, settings: WorkerSettings) -> str:
    return run_job(job_id, settings=settings, publish=lambda *_: True)


def _trained_tokens(service, job_id) -> int:
    with session_scope(service.settings) as session:
        values = session.scalars(select(MetricPoint.values).where(MetricPoint.job_id == job_id))
        return sum(int(v["trained_tokens"]) for v in values)


def test_progress_written_during_an_outage_is_stored_once_when_the_database_is_back(pg, monkeypatch):
    service, settings, proxy = pg
    job_id = service.create(dora_method(max_steps=30, checkpoint_interval=5))
    outage = Outage(proxy, begin=4, end=17).install(monkeypatch)
    assert _run(job_id, settings) == "succeeded"
    assert outage.began is not None and outage.ended is not None
    assert service.steps(job_id) == list(range(1, 31))  # each step once: none lost in the outage
    assert [c.step for c in service.checkpoints(job_id)] == [5, 10, 15, 20, 25, 30]  # registered afterwards
    events = service.events(job_id)
    saved = [m for m in events if m.startswith("Checkpoint saved at step ")]
    assert saved == [f"Checkpoint saved at step {s}" for s in (5, 10, 15, 20, 25, 30)]  # once each, in order
    assert events.count("The job has successfully completed") == 1
    job = service.get(job_id)
    assert job["status"] == "succeeded" and job["trained_tokens"] == _trained_tokens(service, job_id) > 0


def test_a_run_that_ends_inside_an_outage_finishes_when_the_database_is_back(pg, monkeypatch):
    """Training ends while the database is down: the trained tokens, the outputs' registration and
    the final status wait for it (with backoff, within the lease) instead of failing the task."""
    service, settings, proxy = pg
    job_id = service.create(dora_method(max_steps=8, checkpoint_interval=4), outputs=["adapter"])
    outage = Outage(proxy, begin=8, seconds=6).install(monkeypatch)
    started = time.monotonic()
    assert _run(job_id, settings) == "succeeded"
    assert outage.ended is not None and time.monotonic() - started >= 6
    job = service.get(job_id)
    assert job["status"] == "succeeded" and len(job["result_files"]) == 1
    assert [a["name"] for a in service.artifacts(job_id)] == ["adapter"]
    assert service.steps(job_id) == list(range(1, 9))
    assert job["trained_tokens"] == _trained_tokens(service, job_id) > 0


def test_an_attempt_replaced_during_an_outage_writes_nothing_when_the_database_is_back(pg, monkeypatch):
    """The fence holds: another attempt took the job while this one could not reach the database;
    what this one buffered (the last step, its checkpoint, the final status) is never written."""
    service, settings, proxy = pg
    job_id = service.create(dora_method(max_steps=8, checkpoint_interval=4), outputs=["adapter"])

    def take_over():
        with session_scope(service.settings) as session:  # a direct connection: another worker's claim
            session.execute(update(Job).where(Job.id == job_id).values(lease_owner="other:1",
                                                                        attempt=Job.attempt + 1))
            session.commit()

    Outage(proxy, begin=8, seconds=3, during=take_over).install(monkeypatch)
    assert _run(job_id, settings) == "lost"
    job = service.row(job_id)
    assert job.status == "running" and job.lease_owner == "other:1" and job.result_files == []
    assert service.steps(job_id) == list(range(1, 8))  # step 8 was buffered by the replaced attempt
    assert [c.step for c in service.checkpoints(job_id)] == [4]
    with session_scope(service.settings) as session:
        assert session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all() == []


def test_an_outage_longer_than_the_lease_gives_the_job_up_without_writing(pg, monkeypatch):
    """Past the lease another worker may own the job: the attempt stops retrying and writes nothing;
    the job is the reconciler's (lease expired) and the next attempt resumes from its checkpoint."""
    service, settings, proxy = pg
    settings = settings.model_copy(update={"lease_seconds": 4, "heartbeat_seconds": 1})
    job_id = service.create(dora_method(max_steps=8, checkpoint_interval=4), outputs=["adapter"])
    outage = Outage(proxy, begin=8, seconds=10).install(monkeypatch)
    assert _run(job_id, settings) == "lost"
    assert outage.ended is None  # it gave up inside the outage, at 0.8 x the lease, not when it ended
    wait_for(lambda: outage.ended, timeout=20, what="the outage to end")
    job = service.row(job_id)
    assert job.status == "running" and job.result_files == [] and job.finished_at is None
    assert service.artifacts(job_id) == []
    assert service.steps(job_id) == list(range(1, 8))  # step 8 was in the buffer given up

    # its lease (4 s) expired during the outage: the reconciler would re-publish it; run it here
    assert _run(job_id, service.settings) == "succeeded"
    job = service.get(job_id)
    assert job["attempt"] == 2 and job["resumed_from_step"] == 8  # this host's checkpoint of the last step
    assert service.steps(job_id) == list(range(1, 9))  # step 8 from this host's metrics.jsonl: no gap
