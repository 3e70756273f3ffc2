"""The broker is only a wake-up call: jobs survive a Redis restart and a Redis outage.

A Redis of this test's own (a free port, no persistence: a restart loses every message, the
worst case) next to PostgreSQL. Job A runs while job B waits in Redis; Redis restarts (B's
message is gone); job C is created while Redis is down (the API answers, the job is in SQL).
When Redis is back, the reconciler re-publishes B and C from SQL and all three succeed.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.support.jobs import dora_method, wait_for
from tests.support.services import free_port, postgres_database, unavailable
from tests.support.stack import make_stack


class OwnRedis:
    def __init__(self, port: int, folder) -> None:
        self.port, self.folder, self.process = port, folder, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, timeout=20, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def ping(self) -> bool:
        import redis

        try:
            return redis.Redis(port=self.port, socket_connect_timeout=1).ping()
        except redis.RedisError:
            return False


@pytest.fixture(scope="module")
def outage(tmp_path_factory, tiny_model_dir):
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "not installed", problem="is not available")
    root = tmp_path_factory.mktemp("outages")
    redis = OwnRedis(free_port(), root)
    redis.start()
    with postgres_database() as database_url:
        stack = make_stack(root, database_url=database_url, broker_url=redis.url, tiny_model_dir=tiny_model_dir)
        try:
            stack.start_api()
            stack.start_worker()
            yield stack, redis
        finally:
            stack.stop()
            redis.stop()


def test_jobs_survive_a_redis_restart_and_a_redis_outage(outage):
    stack, redis = outage
    api = stack.api
    a = api.create(dora_method(max_steps=150, checkpoint_interval=50))
    wait_for(lambda: api.steps(a["id"]), timeout=60, what="job A to start training")
    b = api.create(dora_method(max_steps=4, checkpoint_interval=4))  # its message waits in Redis behind A
    assert api.job(b["id"])["status"] == "queued"

    redis.stop()  # a restart without persistence: B's message is gone
    started = time.monotonic()
    c = api.create(dora_method(max_steps=4, checkpoint_interval=4))  # the broker is down: the job is still created
    assert c["status"] == "queued" and time.monotonic() - started < 10
    redis.start()

    for job in (a, b, c):
        done = api.wait(job["id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempt"] == 1, done
    republished = " ".join(line for line in stack.workers[-1].text().splitlines() if "re-published" in line)
    assert b["id"] in republished and c["id"] in republished  # from SQL, by the reconciler
