"""The named reads by status (store/job_queries.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from store import jobs as job_store
from store.db import session_scope
from store.job_queries import active_job_using_file, fine_tuned_models, still_queued, waiting_for_a_worker
from store.models import utcnow
from tests.support.api_client import FakeWorker


def test_still_queued_and_waiting_for_a_worker(tenant, settings, worker):
    queued, running, cancelled = (tenant.job()["id"] for _ in range(3))
    worker.claim(running, lease_seconds=-1)  # its lease lapsed: a claim would take it, but it is not waiting
    tenant.post(f"/v1/fine_tuning/jobs/{cancelled}/cancel")
    with session_scope(settings) as session:
        assert still_queued(session, [queued, running, cancelled, "ftjob-none"]) == {queued}
        waiting = waiting_for_a_worker(session, now=utcnow() + timedelta(seconds=1))
    assert queued in waiting and running not in waiting and cancelled not in waiting


def test_a_file_is_in_use_while_an_active_job_uses_it(tenant, settings, worker):
    job = tenant.job()
    with session_scope(settings) as session:
        assert active_job_using_file(session, tenant_id=tenant.tenant_id, file_id=job["training_file"]) == job["id"]
    worker.claim(job["id"])
    assert worker.call(job_store.finish_job, job_id=job["id"], status="failed")
    with session_scope(settings) as session:
        assert active_job_using_file(session, tenant_id=tenant.tenant_id, file_id=job["training_file"]) is None


def test_fine_tuned_models_are_the_succeeded_jobs(tenant, settings):
    done, failed = tenant.job()["id"], tenant.job()["id"]
    for job_id, status in ((done, "succeeded"), (failed, "failed")):
        worker = FakeWorker(settings)
        worker.claim(job_id)
        assert worker.call(job_store.finish_job, job_id=job_id, status=status)
    with session_scope(settings) as session:
        assert [job.id for job in fine_tuned_models(session, tenant_id=tenant.tenant_id)] == [done]
