"""Streamed responses hold no database connection (issue [reliability-3] N1), a tenant's downloads are
capped per API process, and a stalled client is cut.

40 downloads by one tenant whose client read 1 KB/s each held a pooled connection `idle in
transaction` for as long as it streamed (the request's session, a FastAPI yield dependency, lived
until the last byte was sent): the pool (20 + 20) was gone and every request of every other tenant
waited the 5 s checkout timeout for a 503. Real uvicorn, real PostgreSQL, clients on raw sockets
with a small receive buffer that read the response head and then nothing more.
"""

from __future__ import annotations

import logging
import socket
import time

import anyio
import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from api.downloads import StalledClientError
from api.streams import EventStream
from store import jobs as job_store
from store.storage import LocalStorage, job_key
from tests.support.api_client import recording_app
from tests.support.jobs import wait_for
from tests.support.services import running_server

BIG = 16 * 1024 * 1024  # far more than the socket buffers on both sides: a stalled client leaves the body unsent
STALLED = 40  # the pool's default size and overflow together


def big_job(tenant, worker, settings) -> tuple[str, str]:
    """(job id, its result file's id) of a job finished with one BIG artifact file, put straight into storage."""
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    prefix = job_key(tenant.tenant_id, job_id, "attempts", "1", "merged")
    block = bytes(1024 * 1024)
    LocalStorage(settings.storage_url).put_stream(f"{prefix}/model.safetensors", (block for _ in range(BIG // 2**20)))
    spec = job_store.ArtifactSpec(name="merged", storage_prefix=prefix,
                                  files=[{"path": "model.safetensors", "bytes": BIG, "sha256": ""}])
    assert worker.call(job_store.finish_job, job_id=job_id, status="succeeded", artifacts=[spec])
    result_file = tenant.get(f"/v1/fine_tuning/jobs/{job_id}").json()["result_files"][0]
    return job_id, result_file


def download_paths(job_id: str, result_file: str) -> list[str]:
    """The three kinds of download: a file's content (here a tar), an artifact's archive, an artifact file."""
    artifacts = f"/v1/fine_tuning/jobs/{job_id}/artifacts/merged"
    return [f"/v1/files/{result_file}/content", f"{artifacts}/archive", f"{artifacts}/files/model.safetensors"]


def stalled_download(url: str, path: str, key: str) -> tuple[socket.socket, int]:
    """A GET whose client reads the response head (and a little body), then nothing: (socket, status)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # no autotuning: the window stays small
    sock.settimeout(15)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1024)
        assert data, f"the server closed {path} before answering"
        head += data
    return sock, int(head.split(b" ", 2)[1])


def idle_in_transaction(database_url: str) -> int:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND state = 'idle in transaction'").fetchone()[0]


@pytest.mark.postgresql_only
def test_stalled_downloads_hold_no_connection_and_starve_no_one(settings, tenant, other_tenant, worker):
    app = recording_app(settings.model_copy(update={"max_downloads_per_tenant": 0}))  # no cap: 40 stream at once
    pool = app.state.engine.pool
    assert (pool.size(), pool._max_overflow) == (20, 20)  # the defaults
    job_id, result_file = big_job(tenant, worker, settings)
    others_file = other_tenant.file_id()
    paths = download_paths(job_id, result_file)
    sockets = []
    with running_server(app) as url:
        try:
            for index in range(STALLED):
                sock, status = stalled_download(url, paths[index % len(paths)], tenant.key)
                sockets.append(sock)
                assert status == 200, (index, status)
            time.sleep(0.2)  # every response is blocked on its client by now
            assert pool.checkedout() == 0, "downloads hold pooled connections while they stream"
            assert idle_in_transaction(settings.database_url) == 0
            with httpx.Client(base_url=url, headers=other_tenant.headers, timeout=30) as other:
                for path in (f"/v1/files/{others_file}", "/v1/files", f"/v1/files/{others_file}/content") * 3:
                    started = time.monotonic()
                    response = other.get(path)
                    assert response.status_code == 200, (path, response.status_code, response.text[:200])
                    assert time.monotonic() - started < 1.0, path
        finally:
            for sock in sockets:
                sock.close()


# -- the per-tenant cap and the send timeout: apps with small limits -------------------------------------
CAP = 2
SEND_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def capped_app(settings):
    return recording_app(settings.model_copy(update={"max_downloads_per_tenant": CAP}))


@pytest.fixture(scope="module")
def capped_url(capped_app):
    with running_server(capped_app) as url:
        yield url


@pytest.fixture(scope="module")
def impatient_app(settings):
    return recording_app(settings.model_copy(update={"stream_send_timeout_seconds": SEND_TIMEOUT}))


@pytest.fixture(scope="module")
def impatient_url(impatient_app):
    with running_server(impatient_app) as url:
        yield url


@pytest.mark.postgresql_only  # the slots are the API process's: one backend says it
def test_a_tenants_downloads_are_capped_with_a_429_and_given_back(capped_app, capped_url, settings, tenant,
                                                                   other_tenant, worker):
    job_id, result_file = big_job(tenant, worker, settings)
    paths = download_paths(job_id, result_file)
    slots = capped_app.state.streams.downloads
    held = [stalled_download(capped_url, paths[index], tenant.key) for index in range(CAP)]
    try:
        assert [status for _, status in held] == [200] * CAP
        refused = httpx.get(f"{capped_url}{paths[2]}", headers=tenant.headers, timeout=10)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"].isdigit()
        assert (refused.json()["error"]["type"], refused.json()["error"]["code"]) == ("requests", "rate_limit_exceeded")
        # the cap is the tenant's: another tenant downloads, and the tenant's other requests go on
        others = other_tenant.file_id()
        assert httpx.get(f"{capped_url}/v1/files/{others}/content", headers=other_tenant.headers,
                         timeout=10).status_code == 200
        assert httpx.get(f"{capped_url}/v1/files", headers=tenant.headers, timeout=10).status_code == 200
        held.pop()[0].close()  # a client goes away: its slot comes back
        wait_for(lambda: slots.count(tenant.tenant_id) == CAP - 1, timeout=5, what="the slot to be given back")
        with httpx.stream("GET", f"{capped_url}{paths[2]}", headers=tenant.headers, timeout=10) as response:
            assert response.status_code == 200
    finally:
        for sock, _ in held:
            sock.close()
    wait_for(lambda: slots.count(tenant.tenant_id) == 0, timeout=5, what="every slot to be given back")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.postgresql_only
def test_a_client_that_takes_nothing_is_cut_after_the_send_timeout(impatient_app, impatient_url, settings, tenant,
                                                                   worker, caplog):
    caplog.set_level(logging.INFO, logger="api.downloads")
    uvicorn_errors = Records()
    logging.getLogger("uvicorn.error").addHandler(uvicorn_errors)
    job_id, result_file = big_job(tenant, worker, settings)
    slots = impatient_app.state.streams.downloads
    try:
        sock, status = stalled_download(impatient_url, download_paths(job_id, result_file)[2], tenant.key)
        with sock:
            assert status == 200
            # cut: the slot is back while the client still has not read anything more
            wait_for(lambda: slots.count(tenant.tenant_id) == 0, timeout=SEND_TIMEOUT + 5,
                     what="the stalled download to be cut")
            received = 0
            while data := sock.recv(1 << 20):  # what was in the buffers, then the end: the server closed it
                received += len(data)
        assert received < BIG
    finally:
        logging.getLogger("uvicorn.error").removeHandler(uvicorn_errors)
    assert "cut a stalled client of /v1/fine_tuning/jobs/" in caplog.text
    assert [r.getMessage() for r in uvicorn_errors.records if r.levelno >= logging.ERROR] == []


def test_an_event_stream_whose_client_takes_nothing_is_cut_and_gives_its_slot_back():
    """The event streams share the send timeout; an SSE message is too small to fill real socket
    buffers quickly, so the client here is a `send` that never returns, as the server's is while
    a stalled client's buffers are full."""
    closed = []

    async def messages():
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    async def send(message):
        if message["type"] == "http.response.body":
            await anyio.sleep_forever()

    async def receive():
        await anyio.sleep_forever()

    async def run() -> float:
        started = time.monotonic()
        stream = EventStream(messages(), on_close=lambda: closed.append(True), send_timeout=0.2)
        with pytest.raises(StalledClientError):
            await stream({"type": "http", "path": "/v1/fine_tuning/jobs/ftjob-x/events"}, receive, send)
        return time.monotonic() - started

    assert anyio.run(run) < 5
    assert closed == [True]
