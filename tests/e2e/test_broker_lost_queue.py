"""A broker that lost its queue (Redis FLUSHALL, a restart without persistence) is noticed within
seconds, and SQL's queued jobs are re-published at once instead of after DORA_REQUEUE_AFTER_SECONDS.

PostgreSQL and a real `dora worker` (with its reconciler) on a Redis database number of this test's
own, which the test empties with FLUSHDB (never FLUSHALL: the server is shared). The requeue delay
is left at its 300 s default, so only the lost-queue check can bring the waiting job back in time.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.support.jobs import dora_method, wait_for
from tests.support.services import postgres_database, unavailable
from tests.support.stack import TIMINGS, make_stack

# its own database number: the API suite uses 15, benchmarks/api_load.py 14, the e2e stack 13
REDIS_URL = os.environ.get("DORA_TEST_E2E_FLUSH_REDIS_URL", "redis://127.0.0.1:6379/12")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        unavailable("Redis", error, problem="is not available")
    client.flushdb()  # leftovers of an earlier run; this database number is this test's alone
    root = tmp_path_factory.mktemp("lost-queue")
    with postgres_database() as database_url:
        stack = make_stack(root, database_url=database_url, broker_url=REDIS_URL, tiny_model_dir=tiny_model_dir)
        stack.env["DORA_REQUEUE_AFTER_SECONDS"] = "300"  # the default: what the campaign waited for
        try:
            stack.start_api()
            stack.start_worker()
            yield stack, client
        finally:
            stack.stop()
            client.flushdb()


def test_jobs_queued_in_a_broker_that_lost_its_data_are_republished_within_seconds(stack):
    stack, redis = stack
    api = stack.api
    a = api.create(dora_method(max_steps=5000, checkpoint_interval=1000))  # keeps the only worker busy
    wait_for(lambda: api.steps(a["id"]), timeout=60, what="job A to start training")
    b = api.create(dora_method(max_steps=4, checkpoint_interval=4))
    wait_for(lambda: redis.llen("gpu") == 1, timeout=10, what="B's message to wait in Redis")
    assert api.job(b["id"])["status"] == "queued"

    redis.flushdb()  # what FLUSHALL, or a Redis restarted without persistence, does to this database
    flushed = time.monotonic()
    assert redis.llen("gpu") == 0
    wait_for(lambda: redis.llen("gpu") >= 1, timeout=30, what="B to be re-published")
    republished = time.monotonic() - flushed
    api.cancel(a["id"])  # frees the worker for B
    done = api.wait(b["id"], timeout=60)
    assert done["status"] == "succeeded" and done["attempt"] == 1, done
    assert time.monotonic() - flushed < 60
    log = stack.workers[-1].text()
    assert any("lost its queue" in line and b["id"] in line for line in log.splitlines()), log[-3000:]
    TIMINGS["broker lost its queue"] = {"flush_to_republished": round(republished, 2),
                                        "flush_to_succeeded": round(time.monotonic() - flushed, 2)}
