"""Bursts, slow clients and a failing database: 503s with Retry-After, never 500s, and no starvation.

Real uvicorn servers in threads, real PostgreSQL (and SQLite where the case applies), a TCP proxy
the test controls in front of PostgreSQL (tests/support/tcp_proxy.py) to take it away: `refuse`
is a database that is down, `blackhole` a partition where bytes go in and nothing comes back.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy.engine import make_url

from api.app import create_app
from store.db import dispose_engines, session_scope
from store.tenants import create_api_key
from tests.support.api_client import CHAT_ROW
from tests.support.services import running_server
from tests.support.tcp_proxy import tcp_proxy

# outage-sized timeouts for the apps built here (the defaults are 5 s / 30 s / 5 s)
FAST_TIMEOUTS = {"db_connect_timeout_seconds": 2, "db_statement_timeout_seconds": 2.0, "db_pool_timeout_seconds": 2.0}


def _key(settings, tenant: str) -> dict[str, str]:
    with session_scope(settings) as session:
        return {"Authorization": f"Bearer {create_api_key(session, tenant_name=tenant).key}"}


def _through(proxy, settings, **changes):
    """The same settings with PostgreSQL reached through `proxy`."""
    url = make_url(settings.database_url).set(host="127.0.0.1", port=proxy.port)
    return settings.model_copy(update={"database_url": url.render_as_string(hide_password=False), **FAST_TIMEOUTS,
                                       **changes})


def _upload(client: httpx.Client, headers) -> str:
    response = client.post("/v1/files", headers=headers, files={"file": ("d.jsonl", CHAT_ROW * 3)},
                           data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "service_unavailable"


@pytest.fixture
def pg_settings(settings):
    """The proxy sits in front of PostgreSQL: these tests are marked postgresql_only (SQLite has no
    server to take away), so their SQLite variants are deselected, not skipped."""
    assert settings.database_url.startswith("postgresql")
    return settings


@pytest.mark.postgresql_only
@pytest.mark.parametrize("auth_cache_seconds", [0.0, 60.0])
def test_database_down_is_503_with_retry_after_then_recovers(pg_settings, auth_cache_seconds):
    """F3: with the database refusing, every route that needs it is a 503 (from the key lookup, or
    with the key cached, from the route itself); /healthz stays 200; all 200 again once it is back."""
    headers = _key(pg_settings, "outage-down")
    with tcp_proxy("127.0.0.1", make_url(pg_settings.database_url).port or 5432) as proxy:
        app = create_app(_through(proxy, pg_settings, auth_cache_seconds=auth_cache_seconds))
        with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            file_id = _upload(client, headers)
            job = client.post("/v1/fine_tuning/jobs", headers=headers,
                              json={"model": "tiny-llama", "training_file": file_id}).json()
            proxy.set_mode("refuse")
            for response in (client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=headers),
                             client.get("/v1/fine_tuning/jobs", headers=headers),
                             client.post("/v1/fine_tuning/jobs", headers=headers,
                                         json={"model": "tiny-llama", "training_file": file_id}),
                             client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=headers),
                             client.post("/v1/files", headers=headers, files={"file": ("d.jsonl", CHAT_ROW)},
                                         data={"purpose": "fine-tune"})):
                _assert_503(response)
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
            proxy.set_mode("forward")
            assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=headers).status_code == 200
            assert client.post("/v1/fine_tuning/jobs", headers=headers,
                               json={"model": "tiny-llama", "training_file": file_id}).status_code == 200


@pytest.mark.postgresql_only
def test_a_partition_is_answered_in_seconds_and_healthz_at_once(pg_settings):
    """F4: bytes go in, nothing comes back. Pooled connections hang on their ping or statement
    and new ones on their handshake: each is cut by a deadline and answered 503 within seconds,
    and /healthz, which touches neither the database nor the thread pool, answers at once."""
    headers = _key(pg_settings, "outage-partition")
    with tcp_proxy("127.0.0.1", make_url(pg_settings.database_url).port or 5432) as proxy:
        app = create_app(_through(proxy, pg_settings, auth_cache_seconds=60.0))
        with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            job_id = client.post("/v1/fine_tuning/jobs", headers=headers,
                                 json={"model": "tiny-llama", "training_file": _upload(client, headers)}).json()["id"]
            proxy.set_mode("blackhole")
            with ThreadPoolExecutor(8) as pool:  # hung requests fill threads while /healthz is asked
                started = time.monotonic()
                hung = [pool.submit(client.get, f"/v1/fine_tuning/jobs/{job_id}", headers=headers) for _ in range(6)]
                time.sleep(0.5)
                health_started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                assert time.monotonic() - health_started < 1.0
                for future in hung:
                    _assert_503(future.result())
                assert time.monotonic() - started < 15  # connect/ping deadline (2 s), retried by the pool
            proxy.set_mode("forward")
            assert client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=headers).status_code == 200


@pytest.fixture
def fresh_engines():
    """Engines are cached per URL: an app with another pool size needs the cache empty before it
    is built, and emptied again after, so later apps do not inherit its small pool."""
    dispose_engines()
    yield
    dispose_engines()


def test_burst_of_creates_on_a_cold_key_cache_gets_no_5xx(settings, fresh_engines):
    """F1: 100 concurrent creates with a pool far smaller than the thread pool, every key lookup
    missing the cache. The lookup used to hold the request's connection while the route waited for
    a thread; now it returns it in the same hop, so the pool never deadlocks against the threads."""
    small_pool = settings.model_copy(update={"db_pool_size": 3, "db_max_overflow": 0, "db_pool_timeout_seconds": 10.0,
                                             "auth_cache_seconds": 0.0,  # and no per-tenant caps: 100 jobs at once
                                             "max_active_jobs_per_tenant": 0, "rate_limit_per_minute": 0})
    app = create_app(small_pool)  # first: the engine cached for this URL is now the small pool's
    headers = _key(settings, "burst")
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            file_id = _upload(client, headers)

        everyone_connected = threading.Barrier(100)

        def create(index: int) -> int:
            with httpx.Client(base_url=url, timeout=60) as one:
                assert one.get("/healthz").status_code == 200  # connected: the creates then arrive at once
                everyone_connected.wait()
                return one.post("/v1/fine_tuning/jobs", headers=headers, json={
                    "model": "tiny-llama", "training_file": file_id, "metadata": {"i": str(index)}}).status_code

        with ThreadPoolExecutor(100) as pool:
            statuses = list(pool.map(create, range(100)))
    assert statuses.count(200) == 100, sorted(set(statuses))


def _trickle_upload(url: str, headers: dict[str, str], stop: threading.Event) -> None:
    """A multipart upload that sends its headers, then one byte every 0.2 s until told to stop."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        request = (f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: {headers['Authorization']}\r\n"
                   "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
                   '--xyz\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n')
        sock.sendall(request.encode())
        while not stop.wait(0.2):
            try:
                sock.sendall(b"{")
            except OSError:
                return


def test_slow_uploads_of_one_tenant_do_not_starve_another(settings, fresh_engines):
    """F2: one tenant trickles 12 uploads (more than the pool has connections); another tenant's
    GETs stay fast, because no upload holds a connection while its body arrives."""
    small_pool = settings.model_copy(update={"db_pool_size": 3, "db_max_overflow": 0, "db_pool_timeout_seconds": 10.0,
                                             "auth_cache_seconds": 0.0,  # no per-tenant caps: this is about the pool
                                             "max_active_jobs_per_tenant": 0, "rate_limit_per_minute": 0})
    app = create_app(small_pool)  # first: the engine cached for this URL is now the small pool's
    slow, other = _key(settings, "slow-uploader"), _key(settings, "patient-poller")
    assert app.state.engine.pool.size() == 3
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        job_id = client.post("/v1/fine_tuning/jobs", headers=other,
                             json={"model": "tiny-llama", "training_file": _upload(client, other)}).json()["id"]
        stop = threading.Event()
        threads = [threading.Thread(target=_trickle_upload, args=(url, slow, stop), daemon=True) for _ in range(12)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)  # every upload has authenticated and is streaming its body
            latencies = []
            for _ in range(20):
                started = time.monotonic()
                assert client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=other).status_code == 200
                latencies.append(time.monotonic() - started)
        finally:
            stop.set()
            for thread in threads:
                thread.join(5)
    assert max(latencies) < 2.0, latencies  # was: a 500 after the 30 s pool timeout


def _raw_response(url: str, head: str, *, timeout: float = 5.0) -> tuple[int, float]:
    """Send only a request head (no body) and read the status line: (status, seconds to answer)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(head.encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1]), time.monotonic() - started


def test_a_huge_body_is_refused_before_it_is_read(settings):
    """F9: a 100 MB JSON body without a key is a 401 before any byte of it is read (it was parsed
    first); with a key, a body declared over the JSON limit is a 413 at once, and one that streams
    past the limit without a length is cut off at the limit."""
    headers = _key(settings, "big-bodies")
    app = create_app(settings)
    with running_server(app) as url:
        no_key = ("POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  "Content-Length: 100000000\r\n\r\n")
        assert _raw_response(url, no_key)[0] == 401  # answered with the body never sent
        declared = no_key.replace("Host: x\r\n", f"Host: x\r\nAuthorization: {headers['Authorization']}\r\n")
        assert _raw_response(url, declared)[0] == 413
        with httpx.Client(base_url=url, timeout=30) as client:
            def chunks():
                yield b'{"model": "tiny-llama", "metadata": {"k": "'
                for _ in range(64):
                    yield b"x" * 65536  # 4 MiB in all, past the 1 MiB limit
                yield b'"}}'

            response = client.post("/v1/fine_tuning/jobs", headers=headers | {"Content-Type": "application/json"},
                                   content=chunks())
            assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


@pytest.mark.postgresql_only
def test_the_api_starts_while_the_database_is_down_and_serves_once_it_is_back(pg_settings, caplog):
    """Also: the API used to exit with a traceback when the database was down at start."""
    headers = _key(pg_settings, "late-database")
    with tcp_proxy("127.0.0.1", make_url(pg_settings.database_url).port or 5432) as proxy:
        proxy.set_mode("refuse")
        app = create_app(_through(proxy, pg_settings, auth_cache_seconds=0.0))
        with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            _assert_503(client.get("/v1/fine_tuning/jobs", headers=headers))
            proxy.set_mode("forward")
            deadline = time.monotonic() + 20
            while (status := client.get("/v1/fine_tuning/jobs", headers=headers).status_code) != 200:
                assert status == 503 and time.monotonic() < deadline
                time.sleep(0.2)
    assert any("database unreachable at start" in record.message for record in caplog.records)


def test_dora_api_starts_with_no_database_and_answers_503(tmp_path):
    """`dora api` used to exit with a traceback when the database was down at start."""
    import os
    import subprocess
    import sys

    from tests.support.services import free_port

    port, dead = free_port(), free_port()  # nothing listens on `dead`
    env = os.environ | {"DORA_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{dead}/none",
                        "DORA_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db", "DORA_STORAGE_URL": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "dora_cli.main", "api", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dora api did not come up"
            time.sleep(0.2)
        _assert_503(httpx.get(f"http://127.0.0.1:{port}/v1/files", headers={"Authorization": "Bearer sk-x"},
                              timeout=30))
    finally:
        process.terminate()
        process.wait(15)
