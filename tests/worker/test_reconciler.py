"""The reconciler: re-publish what SQL says is still to do, once per interval across hosts."""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import update

from store import jobs as job_store
from store.db import session_scope
from store.models import Job, utcnow
from tests.support.services import unavailable
from worker.reconciler import Reconciler


def _age(settings, job_id, seconds: float) -> None:
    """Pretend the job row was last touched `seconds` ago."""
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def _claim(settings, job_id, *, lease_seconds: float, owner: str = "dead-host:1"):
    with session_scope(settings) as session:
        return job_store.claim_job(session, job_id=job_id, owner=owner, lease_seconds=lease_seconds)


def _reconciler(settings, published: list, ok: bool = True) -> Reconciler:
    return Reconciler(settings, publish=lambda job_id, gpus: published.append(job_id) or ok)


def test_a_queued_job_nobody_claimed_is_republished_once_per_interval_across_reconcilers(service):
    job_id = service.create()
    published = []
    first, second = _reconciler(service.settings, published), _reconciler(service.settings, published)
    first.run_once()
    assert job_id not in published  # fresh: its own message may still be on its way
    _age(service.settings, job_id, 60)
    assert job_id in first.run_once().published
    assert job_id not in second.run_once().published  # the other host's reconciler lost the UPDATE
    assert published.count(job_id) == 1


def test_an_expired_lease_is_republished_and_a_live_one_is_not(service):
    live, dead = service.create(), service.create()
    _claim(service.settings, live, lease_seconds=600, owner="live-host:1")
    _claim(service.settings, dead, lease_seconds=-1)
    _age(service.settings, dead, 60)
    published = []
    done = _reconciler(service.settings, published).run_once()
    assert dead in done.published and live not in published


def test_abandoned_jobs_at_the_cap_fail_and_cancelled_ones_are_settled(service):
    capped, cancelled = service.create(max_attempts=1), service.create()
    _claim(service.settings, capped, lease_seconds=-1)
    _claim(service.settings, cancelled, lease_seconds=-1)
    service.cancel(cancelled)  # running: only requested; its worker is dead
    done = _reconciler(service.settings, []).run_once()
    assert {capped, cancelled} <= set(done.settled)
    assert service.get(capped)["status"] == "failed"
    assert service.get(capped)["error"]["code"] == "attempts_exhausted"
    assert service.get(cancelled)["status"] == "cancelled"


def test_a_refused_publish_is_retried_on_a_later_pass(service):
    job_id = service.create()
    _age(service.settings, job_id, 60)
    refused = []
    assert job_id in _reconciler(service.settings, refused, ok=False).run_once().unpublished
    accepted = []
    assert job_id not in _reconciler(service.settings, accepted).run_once().published  # not within the interval
    _age(service.settings, job_id, 60)
    assert job_id in _reconciler(service.settings, accepted).run_once().published


def test_release_gives_the_job_back_only_to_the_lease_holder(service):
    job_id = service.create()
    job = _claim(service.settings, job_id, lease_seconds=600, owner="host:1")
    with session_scope(service.settings) as session:
        assert not job_store.release_job(session, job_id=job_id, owner="host:2", attempt=job.attempt, reason="x")
        assert job_store.release_job(session, job_id=job_id, owner="host:1", attempt=job.attempt,
                                     reason="The worker is shutting down")
    row = service.row(job_id)
    assert row.status == "queued" and row.lease_owner is None and row.attempt == 1
    assert _claim(service.settings, job_id, lease_seconds=600).attempt == 2


def test_the_embedded_broker_forgets_delivered_messages_and_keeps_waiting_ones(tmp_path):
    from sqlalchemy import create_engine, text

    from store.queue import publish_job
    from worker.reconciler import compact_sql_broker

    broker_url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert compact_sql_broker(broker_url) == 0  # nothing published yet: no table
    for job_id in ("ftjob-a", "ftjob-b"):
        assert publish_job(job_id, broker_url=broker_url)
    engine = create_engine(broker_url.split("+", 1)[1])
    with engine.begin() as connection:  # a worker took the first one (kombu only hides it)
        connection.execute(text("UPDATE kombu_message SET visible = 0 WHERE id = (SELECT min(id) FROM kombu_message)"))
    assert compact_sql_broker(broker_url) == 1
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM kombu_message WHERE visible = 1")).scalar() == 1
    assert compact_sql_broker("redis://127.0.0.1:1/0") == 0


# its own Redis database number (the API suite uses 15, benchmarks 14, the e2e suite 11 to 13)
WORKER_REDIS_URL = os.environ.get("DORA_TEST_WORKER_REDIS_URL", "redis://127.0.0.1:6379/10")


def test_a_broker_that_lost_its_queue_gets_every_queued_job_republished_at_the_next_pass(service):
    import redis

    from worker.reconciler import MARKER_KEY

    client = redis.Redis.from_url(WORKER_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        unavailable("Redis", error, problem="is not available")
    client.delete(MARKER_KEY)
    settings = service.settings.model_copy(update={"broker_url": WORKER_REDIS_URL})
    first, second = service.create(), service.create()  # fresh: the usual requeue would wait 5 s
    published = []
    one, other = _reconciler(settings, published), _reconciler(settings, published)
    assert one.run_once().broker_lost_queue  # no marker yet (a first start): re-published, harmlessly
    assert {first, second} <= set(published)
    published.clear()
    assert not other.run_once().broker_lost_queue and published == []  # the marker is there now
    client.delete(MARKER_KEY)  # what FLUSHALL or a restart without persistence does
    done = [one.run_once(), other.run_once()]
    assert [p.broker_lost_queue for p in done] == [True, False]  # SET NX: one reconciler of many
    assert {first, second} <= set(done[0].published) and published.count(first) == 1
    client.delete(MARKER_KEY)


def test_a_failing_pass_is_retried_with_backoff_and_logged(service, monkeypatch, caplog):
    import threading

    from sqlalchemy import exc as sa_exc

    settings = service.settings.model_copy(update={"reconcile_interval_seconds": 1.0})
    reconciler = _reconciler(settings, [])

    def down():
        raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(reconciler, "run_once", down)

    class Waits(threading.Event):
        def __init__(self):
            super().__init__()
            self.waits = []

        def wait(self, timeout=None):
            self.waits.append(timeout)
            if len(self.waits) == 6:
                self.set()
            return self.is_set()

    stop = Waits()
    reconciler.run_forever(stop)
    assert stop.waits == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert "reconciler pass failed: database unreachable" in caplog.text


def test_a_paused_job_is_never_republished_and_one_whose_worker_died_pausing_is_settled_paused(service):
    """Pause (#26): a paused job waits for a resume, however stale its row; a running job asked to
    pause whose worker died is not claimed again but settled paused, the event saying where a
    resume continues."""
    paused, pausing = service.create(), service.create()
    assert service.client.post(f"/v1/fine_tuning/jobs/{paused}/pause", headers=service.headers).json()[
        "status"] == "paused"
    _claim(service.settings, pausing, lease_seconds=-1)
    asked = service.client.post(f"/v1/fine_tuning/jobs/{pausing}/pause", headers=service.headers).json()
    assert asked["status"] == "running" and asked["pause_requested"] is True
    _age(service.settings, paused, 3600)
    _age(service.settings, pausing, 3600)
    published = []
    done = _reconciler(service.settings, published).run_once()
    assert paused not in published and pausing not in published and pausing in done.settled
    job = service.get(pausing)
    assert job["status"] == "paused" and job["pause_requested"] is False and job["finished_at"] is None
    assert "The job was paused at step 0; a resume continues from the start (no checkpoint yet)" in service.events(
        pausing)
    _reconciler(service.settings, published).run_once()
    assert paused not in published and pausing not in published  # and stays so
