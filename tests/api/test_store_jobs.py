"""The job state machine in store/jobs.py: claims, leases, fencing, cancellation, reclaiming (each
function against the table: tests/api/test_job_transitions.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from store import jobs as job_store
from store.db import session_scope
from store.job_queries import list_reclaimable
from store.models import Job, MetricPoint, utcnow
from store.progress import StepMetrics
from tests.support.api_client import FakeWorker


def _status(settings, job_id):
    with session_scope(settings) as session:
        return session.get(Job, job_id)


def test_claim_is_exclusive_and_counts_attempts(tenant, settings):
    job_id = tenant.job()["id"]
    first, second = FakeWorker(settings), FakeWorker(settings)
    claimed = first.claim(job_id)
    assert claimed is not None and claimed.status == "running" and claimed.attempt == 1
    assert claimed.lease_owner == first.owner and claimed.lease_expires_at > utcnow()
    assert second.claim(job_id) is None  # the same message delivered twice: one claim


def test_expired_lease_is_reclaimed_and_the_old_holder_is_fenced_off(tenant, settings):
    job_id = tenant.job()["id"]
    old, new = FakeWorker(settings), FakeWorker(settings)
    old.claim(job_id, lease_seconds=-1)  # already expired: the worker "died"
    with session_scope(settings) as session:
        assert job_id in list_reclaimable(session, queued_for_seconds=3600)
    assert new.claim(job_id).attempt == 2
    assert not old.progress(job_id, step=5, metrics=[StepMetrics(step=5, values={"train_loss": 1.0})]).held
    assert old.call(job_store.add_checkpoint, job_id=job_id, step=5, storage_key="x") is None
    assert not old.call(job_store.finish_job, job_id=job_id, status="succeeded")
    assert new.call(job_store.finish_job, job_id=job_id, status="succeeded")
    job = _status(settings, job_id)
    assert job.status == "succeeded" and job.lease_owner is None and job.fine_tuned_model.startswith("ft:tiny-llama:")


def test_attempt_cap_stops_claims_and_settles_the_job_as_failed(tenant, settings):
    job_id = tenant.job({"max_attempts": 2})["id"]
    for _ in range(2):
        assert FakeWorker(settings).claim(job_id, lease_seconds=-1) is not None
    assert FakeWorker(settings).claim(job_id) is None
    with session_scope(settings) as session:
        assert job_id not in list_reclaimable(session, queued_for_seconds=0)
        assert job_id in job_store.settle_abandoned(session)
    job = _status(settings, job_id)
    assert job.status == "failed" and job.error["code"] == "attempts_exhausted"


def test_heartbeat_extends_the_lease_stores_progress_and_reports_cancel(tenant, settings, worker):
    job_id = tenant.job()["id"]
    worker.claim(job_id, lease_seconds=5)
    beat = worker.progress(job_id, lease_seconds=600, step=3, total_steps=30, epoch=0.1)
    assert beat.held and not beat.cancel_requested
    job = _status(settings, job_id)
    assert job.step == 3 and job.total_steps == 30 and job.lease_expires_at > utcnow() + timedelta(seconds=500)
    assert tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "running"
    beat = worker.progress(job_id, lease_seconds=600)
    assert beat.held and beat.cancel_requested
    assert _status(settings, job_id).step == 3  # progress values not given are left as they are
    assert worker.call(job_store.finish_job, job_id=job_id, status="cancelled")
    assert _status(settings, job_id).status == "cancelled"


def test_resumed_attempt_overwrites_rerun_steps_so_metrics_stay_continuous(tenant, settings):
    job_id = tenant.job()["id"]
    first = FakeWorker(settings)
    first.claim(job_id, lease_seconds=-1)
    metrics = [StepMetrics(step=step, values={"train_loss": 10.0 - step}) for step in range(1, 6)]
    assert first.progress(job_id, lease_seconds=-1, metrics=metrics).held  # the lease stays expired
    second = FakeWorker(settings)
    second.claim(job_id)
    assert second.progress(job_id, resumed_from_step=3, step=3).held
    assert not first.progress(job_id, metrics=[StepMetrics(step=4, values={"train_loss": 99.0})]).held  # fenced off
    for step in range(4, 8):
        assert second.progress(job_id, metrics=[StepMetrics(step=step, values={"train_loss": 1.0})]).held
    with session_scope(settings) as session:
        points = session.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step))
        steps = [(p.step, p.values["train_loss"]) for p in points]
    assert [s for s, _ in steps] == list(range(1, 8))
    assert steps[3][1] == 1.0  # step 4 comes from the second attempt
    assert _status(settings, job_id).resumed_from_step == 3


def test_cancel_of_a_queued_job_is_immediate_and_it_is_never_claimed(tenant, settings, worker):
    job_id = tenant.job()["id"]
    assert tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert worker.claim(job_id) is None


def test_abandoned_job_with_cancel_requested_ends_cancelled(tenant, settings, worker):
    job_id = tenant.job()["id"]
    worker.claim(job_id, lease_seconds=-1)
    tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert FakeWorker(settings).claim(job_id) is None  # cancel requested: not run again
    with session_scope(settings) as session:
        assert job_id in job_store.settle_abandoned(session)
    assert _status(settings, job_id).status == "cancelled"


def test_stale_queued_jobs_are_listed_for_republishing(tenant, settings):
    job_id = tenant.job()["id"]
    with session_scope(settings) as session:
        assert job_id not in list_reclaimable(session, queued_for_seconds=3600)
        later = utcnow() + timedelta(hours=2)
        assert job_id in list_reclaimable(session, queued_for_seconds=3600, now=later, limit=10_000)


def test_a_job_its_last_attempt_gave_back_is_settled_not_left_queued(tenant, settings, worker):
    """A worker shut down during attempt N of N releases the job: no claim can take it, so it is
    neither re-published nor left `queued` forever; the reconciler's settle fails it."""
    job_id = tenant.job({"max_attempts": 1})["id"]
    worker.claim(job_id)
    assert worker.call(job_store.release_job, job_id=job_id, reason="The worker is shutting down")
    assert FakeWorker(settings).claim(job_id) is None
    later = utcnow() + timedelta(hours=2)
    with session_scope(settings) as session:
        assert job_id not in list_reclaimable(session, queued_for_seconds=0, now=later, limit=10_000)
        assert not job_store.mark_republished(session, job_id=job_id, not_since=later, now=later)
        assert job_id in job_store.settle_abandoned(session)
    job = _status(settings, job_id)
    assert job.status == "failed" and job.error["code"] == "attempts_exhausted" and job.finished_at is not None


def test_a_job_given_back_after_a_cancel_request_is_settled_cancelled(tenant, settings, worker):
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    assert tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    assert worker.call(job_store.release_job, job_id=job_id, reason="The worker is shutting down")  # missed it
    assert FakeWorker(settings).claim(job_id) is None
    later = utcnow() + timedelta(hours=2)
    with session_scope(settings) as session:
        assert job_id not in list_reclaimable(session, queued_for_seconds=0, now=later, limit=10_000)
        assert job_id in job_store.settle_abandoned(session)
    assert _status(settings, job_id).status == "cancelled"


def test_settling_leaves_live_and_claimable_jobs_alone(tenant, settings, worker):
    queued, live = tenant.job()["id"], tenant.job()["id"]
    worker.claim(live, lease_seconds=600)
    with session_scope(settings) as session:
        settled = job_store.settle_abandoned(session, now=utcnow() + timedelta(seconds=60))
    assert queued not in settled and live not in settled
    assert _status(settings, queued).status == "queued" and _status(settings, live).status == "running"
