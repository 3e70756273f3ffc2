"""Publishing a job: one Celery message, holding only the job id, on the `gpu` queue."""

from __future__ import annotations

import base64
import json
import time

from store.queue import QUEUE, TASK_NAME, gpus_of_queue, publish_job, queue_for, queues_up_to


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


def test_a_job_needing_n_gpus_goes_to_the_queue_of_n_gpu_jobs(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE, "gpu-x2")
    assert publish_job("ftjob-two", broker_url=redis_url, gpus=2)
    assert client.llen(QUEUE) == 0 and client.llen("gpu-x2") == 1
    args, _, _ = json.loads(base64.b64decode(json.loads(client.lpop("gpu-x2"))["body"]))
    assert args == ["ftjob-two"]


def test_queue_names_and_gpu_counts_map_both_ways():
    assert [queue_for(n) for n in (1, 2, 8)] == ["gpu", "gpu-x2", "gpu-x8"]
    assert queues_up_to(3) == ["gpu", "gpu-x2", "gpu-x3"]
    assert [gpus_of_queue(queue_for(n)) for n in range(1, 9)] == list(range(1, 9))
    assert gpus_of_queue("webhooks") is None and gpus_of_queue("gpu-x1") is None and gpus_of_queue(None) is None
