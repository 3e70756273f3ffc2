"""Publishing a job: one Celery message, holding only the job id, on the `gpu` queue."""

from __future__ import annotations

import base64
import json
import time

from store.queue import QUEUE, TASK_NAME, publish_job


def test_publish_puts_one_message_with_the_job_id_on_the_gpu_queue(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE)
    assert publish_job("ftjob-test", broker_url=redis_url)
    raw = client.lpop(QUEUE)
    message = json.loads(raw)
    assert message["headers"]["task"] == TASK_NAME
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == ["ftjob-test"] and kwargs == {}
    assert client.llen(QUEUE) == 0


def test_an_unreachable_broker_fails_fast_and_quietly():
    started = time.monotonic()
    assert publish_job("ftjob-x", broker_url="redis://127.0.0.1:1/0") is False
    assert time.monotonic() - started < 5
