"""PostgreSQL taken away from a running service: the workers wait it out and lose nothing.

Two `dora api` processes and a real `dora worker` (with its reconciler) reach PostgreSQL through
a TCP proxy the test controls (tests/support/tcp_proxy.py): `refuse` is a database that is down,
`forward` brings it back. Redis (a database number of this module's own) stays up throughout.
The lease is 60 s here, above the 30 s outage, as the 120 s default is above a minute's outage.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.jobs import dora_method, wait_for
from tests.support.services import postgres_database, unavailable
from tests.support.stack import TIMINGS, Api, make_stack
from tests.support.tcp_proxy import tcp_proxy

# its own database number: the API suite uses 15, benchmarks 14, the e2e stack 13, the lost-queue test 12
REDIS_URL = os.environ.get("DORA_TEST_E2E_OUTAGE_REDIS_URL", "redis://127.0.0.1:6379/11")
OUTAGE_SECONDS = 30
OUTAGE_ENV = {"DORA_LEASE_SECONDS": "60", "DORA_DB_CONNECT_TIMEOUT_SECONDS": "2",
              "DORA_DB_STATEMENT_TIMEOUT_SECONDS": "5", "DORA_DB_POOL_TIMEOUT_SECONDS": "2"}


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory, tiny_model_dir):
    """(stack through the proxy, the proxy, two API clients): APIs started, no worker yet."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        unavailable("Redis", error, problem="is not available")
    client.flushdb()  # this database number is this module's alone
    root = tmp_path_factory.mktemp("pg-outage")
    with postgres_database() as database_url:
        parsed = make_url(database_url)
        with tcp_proxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
            through = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            stack = make_stack(root, database_url=through, broker_url=REDIS_URL, tiny_model_dir=tiny_model_dir)
            stack.env |= OUTAGE_ENV
            try:
                yield stack, proxy, [stack.start_api(), stack.start_another_api()]
            finally:
                proxy.set_mode("forward")
                stack.stop()
                client.flushdb()


def test_a_worker_started_while_the_database_is_down_waits_for_it_then_works(outage_stack):
    stack, proxy, (api, _) = outage_stack
    proxy.set_mode("refuse")
    try:
        worker = stack._spawn("worker-db-down", ["worker"], stack.env | {"DORA_WORK_DIR": str(stack.root / "w0")})
        wait_for(lambda: "waiting for the database" in worker.text() or not worker.alive(), timeout=60,
                 what="the worker to say it waits for the database")
        time.sleep(4)  # several retries
        assert worker.alive(), worker.text()[-3000:]
        text = worker.text()
        assert "Traceback" not in text and " ready." not in text, text[-3000:]
        assert "reconciler" in text and "database unreachable" in text  # its reconciler waits too
    finally:
        proxy.set_mode("forward")
    try:
        wait_for(lambda: " ready." in worker.text() or not worker.alive(), timeout=90, what="the worker to start")
        assert worker.alive(), worker.text()[-3000:]
        job = api.wait(api.create(dora_method(max_steps=4, checkpoint_interval=4))["id"], timeout=90)
        assert job["status"] == "succeeded", job
    finally:
        worker.stop()
    assert worker.popen.returncode == 0, worker.text()[-3000:]


@dataclass
class Load:
    """Clients reading jobs, their events and metrics from both APIs as fast as they answer."""

    apis: list[Api]
    job_ids: list[str]
    threads: int = 2
    results: list[tuple[float, float, object]] = field(default_factory=list)  # (sent, answered, status or error)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Load:
        self._workers = [threading.Thread(target=self._run, args=(api, i), daemon=True)
                         for api in self.apis for i in range(self.threads)]
        for thread in self._workers:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=60)

    def _run(self, api: Api, offset: int) -> None:
        paths = ["/v1/fine_tuning/jobs", *(f"/v1/fine_tuning/jobs/{j}{suffix}" for j in self.job_ids
                                           for suffix in ("", "/events", "/metrics", "/checkpoints"))]
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.key}"}, timeout=30) as client:
            n = offset
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    outcome: object = client.get(paths[n % len(paths)]).status_code
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                self.results.append((sent, time.monotonic(), outcome))
                n += 1
                time.sleep(0.05)


@pytest.mark.slow
def test_postgres_unreachable_for_30s_under_load_loses_no_job_and_no_step(outage_stack):
    """During the outage the APIs answer 503 (never a 500, never a hang); every job succeeds at
    its first attempt, and every metric step is stored exactly once (1..N, no gap, no duplicate)."""
    stack, proxy, apis = outage_stack
    api = apis[0]
    started = time.monotonic()
    stack.start_worker(work_dir=str(stack.root / "w1"))
    # the long job trains into the outage (and, on a fast machine, ends inside it: its end waits for
    # the database); the others wait in Redis behind it and are claimed after or during the outage
    runs = {"long": 80, "second": 12, "third": 12}
    jobs = {name: api.create(dora_method(max_steps=steps, checkpoint_interval=50))["id"]
            for name, steps in runs.items()}
    wait_for(lambda: len(api.steps(jobs["long"])) >= 3, timeout=90, what="the long job to train", interval=0.05)
    load = Load(apis, list(jobs.values())).start()
    time.sleep(2)
    proxy.set_mode("refuse")
    down = time.monotonic()
    time.sleep(OUTAGE_SECONDS)
    proxy.set_mode("forward")
    up = time.monotonic()
    try:
        finished = {name: api.wait(job_id, timeout=120) for name, job_id in jobs.items()}
        # the load goes on past up + 5 s, where 200s are expected again, however fast the jobs ended
        time.sleep(max(0.0, up + 6.0 - time.monotonic()))
    finally:
        load.stop()

    outcomes = Counter(outcome for _, _, outcome in load.results)
    assert set(outcomes) <= {200, 503}, outcomes  # no 500, no connection error, no timeout
    during = Counter(outcome for sent, answered, outcome in load.results if sent > down + 1 and answered < up)
    assert during and set(during) == {503}, during  # only 503s while the database is away
    assert any(outcome == 200 for sent, _, outcome in load.results if sent > up + 5)  # and 200s after
    for name, job in finished.items():
        assert job["status"] == "succeeded" and job["attempt"] == 1, (name, job)
        assert api.steps(job["id"]) == list(range(1, runs[name] + 1)), name  # each step exactly once
    TIMINGS["PostgreSQL away for 30 s under load"] = {
        "test_seconds": round(time.monotonic() - started, 1), "requests": sum(outcomes.values()),
        "503_during_outage": during[503], "after_outage_to_all_succeeded": round(time.monotonic() - up, 1)}
