"""`dora webhooks` as a process: job transitions delivered from the `webhooks` queue, retried and swept.

A real `dora webhooks` (Celery on its own queue, a thread pool, the sweeper beside it) runs on
the embedded broker (kombu's SQLAlchemy transport on SQLite) and on Redis; the job transitions
are store/jobs.py's own, committed in this process, whose commit publishes the delivery. The
receiver is a real HTTP server on loopback, which the operator setting allows here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from store import jobs as job_store
from store.db import session_scope
from store.migrate import upgrade
from store.queue import WEBHOOK_QUEUE, WEBHOOK_TASK_NAME
from store.settings import Settings
from store.tenants import create_api_key
from tests.support.jobs import wait_for
from tests.support.services import REDIS_URL, unavailable
from tests.support.webhooks import Receiver
from worker.settings import WebhookSenderSettings
from worker.webhooks import make_celery

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = REDIS_URL.rsplit("/", 1)[0] + "/13"  # a database of its own: no other suite's queues
FAST = {"DORA_WEBHOOK_ALLOWED_CIDRS": '["127.0.0.0/8:*"]', "DORA_WEBHOOK_RETRY_SCHEDULE_SECONDS": "[0.5, 1]",
        "DORA_WEBHOOK_SWEEP_INTERVAL_SECONDS": "0.2", "DORA_WEBHOOK_REPUBLISH_AFTER_SECONDS": "1",
        "DORA_WEBHOOK_TIMEOUT_SECONDS": "3", "DORA_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"}


def _broker(kind: str, root: Path) -> str:
    if kind == "sqlite":
        return f"sqla+sqlite:///{root / 'broker.db'}"
    import redis

    try:
        client = redis.Redis.from_url(REDIS_DB, socket_connect_timeout=2)
        client.delete(WEBHOOK_QUEUE)
    except redis.RedisError as error:
        unavailable("Redis", error)
    return REDIS_DB


@pytest.fixture(params=["sqlite", "redis"])
def sender(request, tmp_path):
    """Settings for this process and a running `dora webhooks` on them; yields (settings, log)."""
    env = {"DORA_DATABASE_URL": f"sqlite:///{tmp_path / 'dora.db'}", "DORA_STORAGE_URL": str(tmp_path / "artifacts"),
           "DORA_BROKER_URL": _broker(request.param, tmp_path)} | FAST
    settings = Settings(database_url=env["DORA_DATABASE_URL"], broker_url=env["DORA_BROKER_URL"],
                        storage_url=env["DORA_STORAGE_URL"], auth_cache_seconds=0.0,
                        webhook_allowed_cidrs=["127.0.0.0/8:*"])
    upgrade(settings)
    log = tmp_path / "webhooks.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "dora_cli.main", "webhooks"], cwd=ROOT,
                                   env=os.environ | env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_for(lambda: " ready." in log.read_text() or process.poll() is not None, timeout=60,
                 what="`dora webhooks` to start")
        assert process.poll() is None, log.read_text()
        yield settings, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _tenant_and_webhook(settings: Settings, url: str) -> tuple[str, dict]:
    """A tenant, and its webhook created through the API (target checked, secret shown once)."""
    from api.app import create_app

    with session_scope(settings) as session:
        key = create_api_key(session, tenant_name=f"t-{uuid.uuid4().hex[:10]}")
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/webhooks", headers={"Authorization": f"Bearer {key.key}"},
                               json={"url": url, "events": ["fine_tuning.job.running", "fine_tuning.job.succeeded"]})
    assert response.status_code == 200, response.text
    return key.tenant_id, response.json()


def _job(settings: Settings, tenant_id: str) -> str:
    with session_scope(settings) as session:
        return job_store.create_job(session, tenant_id=tenant_id, model="tiny-llama", training_file="file-x",
                                    validation_file=None, method={}, settings={}, seed=1, suffix=None, metadata=None,
                                    max_attempts=3).id


def test_dora_webhooks_delivers_transitions_from_its_own_queue_retries_and_sweeps(sender):
    settings, log = sender
    receiver = Receiver(answers=[500])
    try:
        tenant_id, webhook = _tenant_and_webhook(settings, receiver.url)
        job_id = _job(settings, tenant_id)
        owner = "test-worker"
        with session_scope(settings) as session:  # the claim's commit publishes its delivery to `webhooks`
            assert job_store.claim_job(session, job_id=job_id, owner=owner, lease_seconds=60) is not None
        first, again = receiver.wait(2, timeout=30)  # answered 500, then the retry (swept when due): 200
        assert first.verify(webhook["secret"])["type"] == again.verify(webhook["secret"])["type"] == (
            "fine_tuning.job.running")
        assert first.headers["webhook-id"] == again.headers["webhook-id"] and again.at - first.at >= 0.5

        # a transition whose commit could not reach the broker: the sender's sweeper publishes it
        broker_down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
        with session_scope(broker_down) as session:
            assert job_store.finish_job(session, job_id=job_id, owner=owner, attempt=1, status="succeeded")
        got = receiver.wait(3, timeout=30)
        assert got[2].verify(webhook["secret"])["type"] == "fine_tuning.job.succeeded"
    finally:
        receiver.close()
    text = log.read_text()
    assert "HTTP 500 -> pending" in text and text.count("HTTP 200 -> delivered") == 2, text[-3000:]


def test_the_sender_is_a_thread_pool_on_its_own_queue():
    conf = make_celery(WebhookSenderSettings(broker_url="redis://127.0.0.1:6379/0", webhook_concurrency=4)).conf
    assert conf.task_default_queue == WEBHOOK_QUEUE == "webhooks" and conf.task_routes[WEBHOOK_TASK_NAME] == {
        "queue": "webhooks"}
    assert conf.worker_pool == "threads" and conf.worker_concurrency == 4 and conf.task_acks_late is False
    result = subprocess.run([sys.executable, "-m", "dora_cli.main", "--help"], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert "webhooks" in result.stdout


def test_in_flight_limits_per_webhook_and_per_tenant_and_the_breaker_counts_failures_in_a_row():
    from datetime import UTC, datetime, timedelta

    from worker.webhooks import Limits

    settings = WebhookSenderSettings(_env_file=None, webhook_max_in_flight_per_endpoint=1,
                                     webhook_max_in_flight_per_tenant=2, webhook_breaker_failures=3,
                                     webhook_breaker_cooldown_seconds=60)
    limits = Limits()
    assert limits.acquire("t1", "w1", settings) and not limits.acquire("t1", "w1", settings)  # the webhook's one
    assert limits.acquire("t1", "w2", settings) and not limits.acquire("t1", "w3", settings)  # the tenant's two
    assert limits.acquire("t2", "w4", settings)  # another tenant is not held back
    limits.release("t1", "w1")
    assert limits.acquire("t1", "w3", settings)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert [limits.count("w1", ok=False, settings=settings, now=now) for _ in range(2)] == [(None, False)] * 2
    assert limits.count("w1", ok=True, settings=settings, now=now) == (None, False)  # a 2xx: in a row no more
    outcomes = [limits.count("w1", ok=False, settings=settings, now=now) for _ in range(4)]
    until = now + timedelta(seconds=60)
    assert outcomes == [(None, False), (None, False), (until, True), (until, False)]  # opened once
    assert limits.open_until("w1", now) == until and limits.open_until("w1", until) is None  # cooled down
    later = until + timedelta(seconds=1)
    assert limits.count("w1", ok=False, settings=settings, now=later) == (later + timedelta(seconds=60), True)
    limits.count("w1", ok=True, settings=settings, now=later)
    assert limits.open_until("w1", later) is None
