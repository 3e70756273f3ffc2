"""Server-sent event streams of a job's events and metrics (api/streams.py), over real uvicorn
servers: ids, resuming, heartbeats, [DONE], the per-tenant bound, tenancy, and a stream served
by one API process woken by a write made elsewhere (LISTEN/NOTIFY on PostgreSQL, polling on SQLite)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import create_engine, event, select, text

from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus
from store.migrate import upgrade
from store.models import Job, JobEvent
from store.progress import PendingEvent, StepMetrics
from store.settings import Settings
from tests.support.api_client import BASE_MODELS, recording_app
from tests.support.jobs import wait_for
from tests.support.services import running_server
from tests.support.sse import api_processes, open_stream

HEARTBEAT = 0.3
LIMIT = 2  # open streams per tenant on the in-process server


@pytest.fixture(scope="module")
def stream_app(settings):
    return recording_app(settings.model_copy(update={"stream_heartbeat_seconds": HEARTBEAT,
                                                     "stream_poll_seconds": 0.1, "max_streams_per_tenant": LIMIT}))


@pytest.fixture(scope="module")
def stream_url(stream_app):
    with running_server(stream_app) as url:
        yield url


def events_path(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/events"


def metrics_path(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/metrics"


def stored_events(settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings) as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def add_events(worker, job_id: str, count: int, prefix: str = "note") -> None:
    """As a worker writes them: one heartbeat each (store/progress.py)."""
    for index in range(count):
        assert worker.progress(job_id, events=[PendingEvent(message=f"{prefix} {index}")]).held


def add_metrics(worker, job_id: str, step: int, values: dict) -> None:
    assert worker.progress(job_id, metrics=[StepMetrics(step=step, values=values)]).held


def running_job(tenant, worker) -> str:
    job_id = tenant.job()["id"]
    assert worker.claim(job_id) is not None
    return job_id


def finish(worker, job_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    assert worker.call(job_store.finish_job, job_id=job_id, status=status)


def test_events_arrive_oldest_first_with_the_stored_ids_then_done(stream_url, tenant, worker, settings):
    job_id = running_job(tenant, worker)
    add_events(worker, job_id, 3)
    finish(worker, job_id)
    with open_stream(stream_url, tenant.key, events_path(job_id)) as stream:
        messages = stream.until_done()
    rows = stored_events(settings, job_id)
    assert [m.id for m in messages] == [r.id for r in rows]
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert [m.id for m in messages] == sorted(m.id for m in messages)  # one writer here: ids in order too
    listed = tenant.get(events_path(job_id), params={"limit": 100}).json()["data"]
    assert [json.loads(m.data) for m in messages] == listed[::-1]  # the list's items, oldest first
    assert json.loads(messages[-1].data)["message"] == "The job has successfully completed"


def test_resume_after_last_event_id_or_after_gives_exactly_the_rest(stream_url, tenant, worker, settings):
    job_id = running_job(tenant, worker)  # 3 events: created, validated, attempt started
    add_events(worker, job_id, 3)
    with open_stream(stream_url, tenant.key, events_path(job_id)) as stream:
        first = stream.messages(4)
    add_events(worker, job_id, 2, prefix="while away")
    finish(worker, job_id)
    rows = stored_events(settings, job_id)
    with open_stream(stream_url, tenant.key, events_path(job_id), headers={"Last-Event-ID": first[-1].id}) as stream:
        rest = stream.until_done()
    assert [m.id for m in first + rest] == [r.id for r in rows]  # no loss, no duplicate
    # a first connect that cannot set headers says the same with ?after=
    with open_stream(stream_url, tenant.key, events_path(job_id), params={"after": first[-1].id}) as stream:
        assert [m.id for m in stream.until_done()] == [m.id for m in rest]
    # Last-Event-ID wins over after (it is the newer position of the same client)
    with open_stream(stream_url, tenant.key, events_path(job_id), headers={"Last-Event-ID": rest[-2].id},
                     params={"after": first[0].id}) as stream:
        assert [m.id for m in stream.until_done()] == [rest[-1].id]


def test_heartbeats_while_idle_and_done_when_the_job_ends(stream_url, tenant, worker, settings):
    job_id = running_job(tenant, worker)
    with open_stream(stream_url, tenant.key, events_path(job_id)) as stream:
        assert len(stream.messages(3)) == 3
        quiet_from = time.monotonic()
        pings = [stream.next() for _ in range(3)]
        assert [p.comment for p in pings] == ["ping"] * 3
        times = [quiet_from, *(p.at for p in pings)]
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert all(0.7 * HEARTBEAT <= gap < 4 * HEARTBEAT for gap in gaps[1:]), gaps  # one per heartbeat
        assert gaps[0] < 4 * HEARTBEAT, gaps
        threading.Timer(0.3, finish, args=(worker, job_id, JobStatus.CANCELLED)).start()
        finished_at = time.monotonic()
        rest = stream.until_done()
    assert [json.loads(m.data)["message"] for m in rest] == ["The job was cancelled"]
    assert time.monotonic() - finished_at < 3


def test_metric_points_by_step_resume_and_done(stream_url, tenant, worker):
    job_id = running_job(tenant, worker)
    for step in (1, 2, 3):
        add_metrics(worker, job_id, step, {"loss": 3.0 - step / 2})
    with open_stream(stream_url, tenant.key, metrics_path(job_id)) as stream:
        first = stream.messages(3)
        assert [m.id for m in first] == ["1", "2", "3"]
        listed = tenant.get(metrics_path(job_id)).json()["data"]
        assert [json.loads(m.data) for m in first] == listed
        add_metrics(worker, job_id, 4, {"loss": 0.9})
        assert stream.messages(1)[0].id == "4"
    add_metrics(worker, job_id, 5, {"loss": 0.8})
    finish(worker, job_id)
    with open_stream(stream_url, tenant.key, metrics_path(job_id), headers={"Last-Event-ID": "2"}) as stream:
        assert [m.id for m in stream.until_done()] == ["3", "4", "5"]
    with open_stream(stream_url, tenant.key, metrics_path(job_id), params={"after": 4}) as stream:
        assert [json.loads(m.data)["values"] for m in stream.until_done()] == [{"loss": 0.8}]


def test_open_streams_per_tenant_are_bounded_and_given_back_on_disconnect(stream_url, stream_app, tenant,
                                                                         other_tenant, worker):
    job_id = running_job(tenant, worker)
    slots = stream_app.state.streams.slots
    with open_stream(stream_url, tenant.key, events_path(job_id)), \
            open_stream(stream_url, tenant.key, metrics_path(job_id)):
        assert slots.count(tenant.tenant_id) == LIMIT
        refused = httpx.get(f"{stream_url}{events_path(job_id)}", params={"stream": "true"},
                            headers={"Authorization": f"Bearer {tenant.key}"}, timeout=5)
        assert refused.status_code == 429
        assert refused.headers["retry-after"].isdigit()
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
        # the bound is the tenant's: another tenant's stream still opens
        other_job = running_job(other_tenant, worker)
        with open_stream(stream_url, other_tenant.key, events_path(other_job)) as other:
            assert other.messages(1)
        # and the plain list is no stream: never refused for it
        assert tenant.get(events_path(job_id)).status_code == 200
    # the client went away: the server's streams stopped and gave their slots back
    wait_for(lambda: slots.count() == 0, timeout=5, what="the streams to stop after the disconnect")
    with open_stream(stream_url, tenant.key, events_path(job_id)) as stream:
        assert stream.messages(1)


def test_streams_hold_no_database_connection_while_waiting(stream_url, stream_app, tenant, worker):
    """Each poll borrows a pooled connection for one read and gives it back. Timed by the pool's
    own checkout/checkin events rather than by sampling, so a slow machine only lengthens the
    reads (milliseconds) while a stream that kept its connection would hold one all window long."""
    job_id = running_job(tenant, worker)
    pool = stream_app.state.engine.pool
    borrowed: dict[int, float] = {}
    holds: list[float] = []

    def on_checkout(dbapi_connection, record, proxy):
        borrowed[id(record)] = time.monotonic()

    def on_checkin(dbapi_connection, record):
        started = borrowed.pop(id(record), None)
        if started is not None:
            holds.append(time.monotonic() - started)

    window = 1.5
    with open_stream(stream_url, tenant.key, events_path(job_id)) as one, \
            open_stream(stream_url, tenant.key, metrics_path(job_id)):
        one.messages(3)
        event.listen(pool, "checkout", on_checkout)
        event.listen(pool, "checkin", on_checkin)
        try:
            time.sleep(window)
            still_out = [time.monotonic() - started for started in list(borrowed.values())]
        finally:
            event.remove(pool, "checkout", on_checkout)
            event.remove(pool, "checkin", on_checkin)
    # two streams polling every 0.1 s read many times in the window, each read briefly
    assert len(holds) >= 4, holds
    assert max(holds) < window / 3, holds
    assert all(age < window / 3 for age in still_out), still_out


def test_another_tenants_job_is_404_and_a_bad_position_400(stream_url, tenant, other_tenant, worker):
    job_id = running_job(tenant, worker)
    headers = {"Authorization": f"Bearer {other_tenant.key}"}
    for path in (events_path(job_id), metrics_path(job_id)):
        response = httpx.get(f"{stream_url}{path}", params={"stream": "true"}, headers=headers, timeout=5)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "job_not_found"
    mine = {"Authorization": f"Bearer {tenant.key}"}
    for path, position in ((events_path(job_id), "ftevent-nope"), (metrics_path(job_id), "seven")):
        response = httpx.get(f"{stream_url}{path}", params={"stream": "true"},
                             headers=mine | {"Last-Event-ID": position}, timeout=5)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "Last-Event-ID"


def test_the_openapi_document_says_text_event_stream(stream_url):
    paths = httpx.get(f"{stream_url}/openapi.json", timeout=10).json()["paths"]
    for path in ("/v1/fine_tuning/jobs/{job_id}/events", "/v1/fine_tuning/jobs/{job_id}/metrics"):
        operation = paths[path]["get"]
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        assert "application/json" in operation["responses"]["200"]["content"]
        names = {p["name"] for p in operation["parameters"]}
        assert {"stream", "after", "Last-Event-ID"} <= names


# -- store: numbering in commit order -----------------------------------------------------------
def test_concurrent_writers_number_events_without_gaps_or_repeats(tenant, worker, settings):
    job_id = running_job(tenant, worker)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: add_events(worker, job_id, 5, prefix=f"writer {i}"), range(8)))
    rows = stored_events(settings, job_id)
    assert [r.seq for r in rows] == list(range(1, 3 + 40 + 1))
    with session_scope(settings) as session:
        assert session.get(Job, job_id).event_seq == len(rows)


def test_migration_numbers_existing_events_in_id_order(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(Settings(database_url=url), revision="0001")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('org-1', 't', '2026-01-01')"))
        for job in ("ftjob-a", "ftjob-b"):
            connection.execute(text(
                "INSERT INTO jobs (id, tenant_id, model, training_file, status, method, settings, seed, attempt, "
                "max_attempts, cancel_requested, step, result_files, created_at, updated_at) VALUES "
                f"('{job}', 'org-1', 'm', 'file-1', 'queued', '{{}}', '{{}}', 1, 0, 3, 0, 0, '[]', '2026-01-01', "
                "'2026-01-01')"))
        for event_id, job in (("ftevent-3", "ftjob-a"), ("ftevent-1", "ftjob-a"), ("ftevent-2", "ftjob-b"),
                              ("ftevent-4", "ftjob-a")):
            connection.execute(text("INSERT INTO job_events (id, job_id, created_at, level, type, message) VALUES "
                                    f"('{event_id}', '{job}', '2026-01-01', 'info', 'message', 'x')"))
    engine.dispose()
    upgrade(Settings(database_url=url))
    engine = create_engine(url)
    with engine.connect() as connection:
        seqs = connection.execute(text("SELECT job_id, id, seq FROM job_events ORDER BY job_id, seq")).all()
        counters = dict(connection.execute(text("SELECT id, event_seq FROM jobs")).all())
    engine.dispose()
    assert [tuple(row) for row in seqs] == [("ftjob-a", "ftevent-1", 1), ("ftjob-a", "ftevent-3", 2),
                                            ("ftjob-a", "ftevent-4", 3), ("ftjob-b", "ftevent-2", 1)]
    assert counters == {"ftjob-a": 3, "ftjob-b": 1}


# -- two API processes on one database ------------------------------------------------------------
@pytest.fixture(scope="module")
def two_apis(settings, tmp_path_factory):
    """Two `dora api` processes on the suite's database. Heartbeats are 30 s apart and, on
    PostgreSQL, so are polls: a stream woken within a second was woken by a NOTIFY."""
    postgres = settings.database_url.startswith("postgresql")
    env = {"DORA_DATABASE_URL": settings.database_url, "DORA_STORAGE_URL": settings.storage_url,
           "DORA_BROKER_URL": settings.broker_url, "DORA_BASE_MODELS": json.dumps(BASE_MODELS),
           "DORA_AUTH_CACHE_SECONDS": "0", "DORA_STREAM_HEARTBEAT_SECONDS": "30",
           "DORA_STREAM_POLL_SECONDS": "30" if postgres else "0.2", "DORA_LOG_LEVEL": "warning"}
    with api_processes(2, env, tmp_path_factory.mktemp("apis")) as urls:
        yield urls


def _arrives_within(stream, write, seconds: float = 1.0):
    """Run `write`, then read the stream's next data message; (message, seconds it took)."""
    result: dict = {}

    def read():
        result["message"] = stream.messages(1)[0]
        result["at"] = time.monotonic()

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)  # the reader is waiting, the stream idle
    written = time.monotonic()
    write()
    reader.join(timeout=10)
    assert "message" in result, "nothing arrived"
    took = result["at"] - written
    assert took < seconds, f"arrived after {took:.2f}s"
    return result["message"], took


def test_a_write_elsewhere_wakes_a_stream_served_by_another_process_within_a_second(two_apis, tenant, worker):
    api_a, api_b = two_apis
    job_id = running_job(tenant, worker)
    with open_stream(api_b, tenant.key, events_path(job_id), read_timeout=10) as events:
        assert len(events.messages(3)) == 3
        # through API process A's path (POST cancel writes an event)
        cancel = lambda: httpx.post(f"{api_a}/v1/fine_tuning/jobs/{job_id}/cancel",  # noqa: E731 - a one-line callable, beside its use
                                    headers={"Authorization": f"Bearer {tenant.key}"}, timeout=5).raise_for_status()
        message, _ = _arrives_within(events, cancel)
        assert json.loads(message.data)["message"].startswith("Cancellation requested")
        # by a worker's heartbeat (store/progress.py)
        message, _ = _arrives_within(events, lambda: add_events(worker, job_id, 1, prefix="from the worker"))
        assert json.loads(message.data)["message"] == "from the worker 0"
        with open_stream(api_b, tenant.key, metrics_path(job_id), read_timeout=10) as metrics:
            message, _ = _arrives_within(metrics, lambda: add_metrics(worker, job_id, 1, {"loss": 1.0}))
            assert message.id == "1"
        finish(worker, job_id, JobStatus.CANCELLED)
        started = time.monotonic()
        assert [json.loads(m.data)["message"] for m in events.until_done()] == ["The job was cancelled"]
        assert time.monotonic() - started < 1.5


@pytest.mark.postgresql_only
def test_a_cut_listen_connection_is_replaced(two_apis, tenant, worker, settings):
    _, api_b = two_apis
    job_id = running_job(tenant, worker)
    with open_stream(api_b, tenant.key, events_path(job_id), read_timeout=10) as events:
        assert len(events.messages(3)) == 3
        engine = create_engine(settings.database_url)
        with engine.begin() as connection:
            cut = connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")).all()
        engine.dispose()
        assert cut, "no LISTEN connection to cut"
        time.sleep(1.0)  # the listener reconnects (backoff from 0.1 s)
        message, _ = _arrives_within(events, lambda: add_events(worker, job_id, 1, prefix="after the cut"))
        assert json.loads(message.data)["message"] == "after the cut 0"
