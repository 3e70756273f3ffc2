"""Per-tenant caps: queued+running jobs and stored bytes. Over one: a 429 in OpenAI's error shape
(type insufficient_quota, code quota_exceeded, Retry-After, x-should-retry: false), nothing stored,
and the caps hold under concurrent requests of the same tenant."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.errors import ApiError
from api.quotas import QUOTA_RETRY_AFTER_SECONDS, check_active_jobs
from store import jobs as job_store
from store.db import session_factory, session_scope
from store.models import File, Job, utcnow
from store.quotas import lock_tenant
from tests.support.api_client import CHAT_ROW, make_tenant, recording_app
from tests.support.artifacts import finish_with_artifacts
from tests.support.doc_blocks import DOCS, page_section
from tests.support.services import running_server

JOBS = "/v1/fine_tuning/jobs"
DATASET = CHAT_ROW * 3


@pytest.fixture
def capped(settings):
    """A client of an app with small caps: 2 active jobs, room for 2.5 datasets; no rate limit."""
    capped = settings.model_copy(update={"max_active_jobs_per_tenant": 2,
                                         "max_stored_bytes_per_tenant": len(DATASET) * 5 // 2,
                                         "rate_limit_per_minute": 0})
    with TestClient(recording_app(capped)) as client:
        yield client, capped


def _assert_quota_error(response, *, param=None):
    assert response.status_code == 429, response.text
    assert response.headers["Retry-After"] == str(QUOTA_RETRY_AFTER_SECONDS)
    assert response.headers["x-should-retry"] == "false"  # the openai client must not spin on it
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("insufficient_quota", "quota_exceeded", param)
    assert error["message"].startswith("Quota exceeded")
    return error


def test_at_the_active_jobs_cap_a_create_is_a_429_until_a_job_ends(capped):
    client, settings = capped
    tenant, other = make_tenant(client, settings), make_tenant(client, settings)
    file_id = tenant.file_id(DATASET)
    body = {"model": "tiny-llama", "training_file": file_id}
    first, _second = (tenant.post(JOBS, json=body).json() for _ in range(2))
    error = _assert_quota_error(tenant.post(JOBS, json=body))
    assert "2 queued or running" in error["message"] and "limit is 2" in error["message"]
    assert tenant.counts()[1] == 2  # nothing was inserted
    assert other.create_job().status_code == 200  # a cap per tenant, not per server
    # replaying an Idempotency-Key is not a new job, so it is not refused
    assert tenant.post(f"{JOBS}/{first['id']}/cancel").json()["status"] == "cancelled"  # ended: frees a place
    replay_key = {"Idempotency-Key": "k-1"}
    created = tenant.post(JOBS, json=body, headers=replay_key)
    assert created.status_code == 200
    assert tenant.post(JOBS, json=body, headers=replay_key).json()["id"] == created.json()["id"]
    _assert_quota_error(tenant.post(JOBS, json=body))


def test_cancelled_jobs_count_against_the_job_creation_rate(settings):
    """N8: a create-then-cancel loop never reaches the active-jobs cap (each job ends at once), so
    it created without bound, each message waking a worker. Jobs created in the window count
    whatever became of them; past the limit a create is a rate-limit 429 with Retry-After."""
    limited = settings.model_copy(update={"max_jobs_created_per_tenant": 3, "max_active_jobs_per_tenant": 1,
                                          "rate_limit_per_minute": 0})
    with TestClient(recording_app(limited)) as client:
        tenant, other = make_tenant(client, limited), make_tenant(client, limited)
        body = {"model": "tiny-llama", "training_file": tenant.file_id(DATASET)}
        created = []
        for _ in range(3):
            created.append(tenant.post(JOBS, json=body).json()["id"])
            assert tenant.post(f"{JOBS}/{created[-1]}/cancel").json()["status"] == "cancelled"
        refused = tenant.post(JOBS, json=body)
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= limited.job_creation_window_seconds
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert "limit is 3" in error["message"]
        assert tenant.counts()[1] == 3 and other.create_job().status_code == 200  # per tenant
        with session_scope(limited) as session:  # the oldest leaves the window: room for one more
            session.execute(update(Job).where(Job.id == created[0]).values(
                created_at=utcnow() - timedelta(seconds=limited.job_creation_window_seconds + 1)))
            session.commit()
        assert tenant.post(JOBS, json=body).status_code == 200
        assert tenant.post(JOBS, json=body).status_code == 429


def test_concurrent_creates_never_pass_the_active_jobs_cap(settings):
    """12 creates of one tenant at once against a cap of 3 from 0: exactly 3 are created."""
    cap = 3
    app = recording_app(settings.model_copy(update={"max_active_jobs_per_tenant": cap, "rate_limit_per_minute": 0}))
    with TestClient(app) as client, running_server(app) as url:
        tenant = make_tenant(client, settings)
        body = {"model": "tiny-llama", "training_file": tenant.file_id(DATASET)}
        start = threading.Barrier(12)

        def create(_: int) -> int:
            with httpx.Client(base_url=url, headers=tenant.headers, timeout=60) as one:
                assert one.get("/healthz").status_code == 200  # connected, so the creates arrive together
                start.wait()
                return one.post(JOBS, json=body).status_code

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(create, range(12)))
    assert sorted(statuses) == [200] * cap + [429] * (12 - cap), statuses
    with session_scope(settings) as session:
        active = session.scalar(select(func.count()).select_from(Job).where(
            Job.tenant_id == tenant.tenant_id, Job.status.in_(job_store.ACTIVE)))
    assert active == cap


def test_a_second_quota_check_waits_for_the_first_to_commit_and_counts_its_insert(client, settings):
    """The lock on the tenant's row, deterministically: while one transaction holds it (checked,
    not yet inserted), another tenant-check blocks; once the first commits its job, the second
    counts it and refuses. Without the lock both would count N-1 and both insert."""
    tenant = make_tenant(client, settings)
    cap = 1
    capped = settings.model_copy(update={"max_active_jobs_per_tenant": cap})
    factory = session_factory(settings)
    outcome: dict = {}

    def second_check() -> None:
        with factory() as session:
            try:
                check_active_jobs(session, settings=capped, tenant_id=tenant.tenant_id)
                outcome["result"] = "passed"
                session.rollback()
            except ApiError as error:
                outcome["result"] = error.status_code
            outcome["at"] = time.monotonic()

    with factory() as first:
        check_active_jobs(first, settings=capped, tenant_id=tenant.tenant_id)  # 0 < 1: passes, holds the lock
        waiting = threading.Thread(target=second_check)
        waiting.start()
        time.sleep(0.5)
        assert "result" not in outcome, "the second check did not wait for the lock"
        inserted_at = time.monotonic()
        job_store.create_job(first, tenant_id=tenant.tenant_id, model="tiny-llama", training_file="file-x",
                             validation_file=None, method={}, settings={}, seed=0, suffix=None, metadata=None,
                             max_attempts=1)  # commits: the lock is released
        waiting.join(timeout=30)
    assert outcome["result"] == 429 and outcome["at"] >= inserted_at


@pytest.mark.postgresql_only  # SQLite has one writer at a time for the whole database: deselected there
def test_lock_tenant_does_not_hold_up_other_tenants(client, settings):
    one, two = make_tenant(client, settings), make_tenant(client, settings)
    factory = session_factory(settings)
    with factory() as first, factory() as second:
        lock_tenant(first, tenant_id=one.tenant_id)
        started = time.monotonic()
        lock_tenant(second, tenant_id=two.tenant_id)
        assert time.monotonic() - started < 1.0
        second.rollback()
        first.rollback()


def _upload_files_left(settings) -> list[Path]:
    return list(Path(settings.upload_tmp_dir).glob("dora-upload-*"))


def test_an_upload_over_the_storage_quota_is_a_429_and_nothing_is_stored(capped):
    client, settings = capped
    tenant, other = make_tenant(client, settings), make_tenant(client, settings)
    kept = [tenant.file_id(DATASET) for _ in range(2)]  # 2 of the 2.5 datasets the quota holds
    error = _assert_quota_error(tenant.upload(DATASET), param="file")
    assert f"{len(DATASET) // 2} bytes left" in error["message"]
    assert tenant.counts() == (2, 0, 2)  # rows, jobs, storage objects: the refused file left nothing
    assert not _upload_files_left(settings)
    assert other.upload(DATASET).status_code == 200  # a quota per tenant
    small = CHAT_ROW  # fits in what is left
    assert tenant.upload(small).status_code == 200
    assert tenant.delete(f"/v1/files/{kept[0]}").status_code == 200  # deleting frees the space
    assert tenant.upload(DATASET).status_code == 200


def test_job_results_count_against_the_storage_quota_until_the_model_is_deleted(capped, worker):
    """A job is never refused for storage, so its results may go over the quota: uploads are then
    refused until the tenant deletes the model (store/quotas.py stored_bytes)."""
    client, settings = capped
    tenant = make_tenant(client, settings)
    job = finish_with_artifacts(tenant, worker, settings)  # a 300 kB result, far over the quota
    _assert_quota_error(tenant.upload(DATASET), param="file")
    assert tenant.delete(f"/v1/models/{job['fine_tuned_model']}").status_code == 200
    assert tenant.upload(DATASET).status_code == 200


def _unfinished_upload(url: str, headers: dict[str, str], rows: int) -> bytes:
    """A chunked upload (no Content-Length) that sends `rows` dataset rows and then stops without
    ending the body: a server that read the whole body before answering would never answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: {headers['Authorization']}\r\n"
                     "Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n".encode())

        def chunk(data: bytes) -> None:
            sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")

        chunk(b"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
              b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n")
        for _ in range(rows):
            chunk(CHAT_ROW)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            received = sock.recv(65536)
            if not received:
                break
            answer += received
        return answer


def test_the_storage_quota_stops_an_upload_while_it_streams(capped, settings):
    """Refused at the first byte past what is left of the quota, before the body has ended."""
    client, capped_settings = capped
    app = recording_app(capped_settings)
    with TestClient(app), running_server(app) as url:
        tenant = make_tenant(client, settings)
        answer = _unfinished_upload(url, tenant.headers, rows=20)  # the quota holds 7.5 rows
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429"), answer[:500]
    assert b'"code":"quota_exceeded"' in body
    assert tenant.counts() == (0, 0, 0) and not _upload_files_left(settings)


def test_a_declared_length_over_the_quota_is_refused_before_the_body(capped):
    client, settings = capped
    tenant = make_tenant(client, settings)
    response = tenant.upload(CHAT_ROW * 2000)  # under the per-file limit, over the quota
    _assert_quota_error(response, param="file")


def test_over_the_per_file_limit_is_still_a_413(settings):
    """The quota only lowers the limit: a file over DORA_MAX_UPLOAD_BYTES with room to spare is a 413."""
    roomy = settings.model_copy(update={"max_stored_bytes_per_tenant": settings.max_upload_bytes * 10})
    with TestClient(recording_app(roomy)) as client:
        tenant = make_tenant(client, settings)
        response = tenant.upload(CHAT_ROW * (settings.max_upload_bytes // len(CHAT_ROW) + 10))
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"


def test_concurrent_uploads_cannot_pass_the_storage_quota_together(settings):
    """Room for 1.5 datasets: each of 6 concurrent uploads fits what is left when it starts, but the
    locked check at commit lets only one be stored; the others are 429 and leave nothing."""
    limited = settings.model_copy(update={"max_stored_bytes_per_tenant": len(DATASET) * 3 // 2,
                                          "rate_limit_per_minute": 0})
    app = recording_app(limited)
    with TestClient(app) as client, running_server(app) as url:
        tenant = make_tenant(client, settings)
        start = threading.Barrier(6)

        def upload(_: int) -> int:
            with httpx.Client(base_url=url, headers=tenant.headers, timeout=60) as one:
                assert one.get("/healthz").status_code == 200
                start.wait()
                return one.post("/v1/files", files={"file": ("t.jsonl", DATASET)},
                                data={"purpose": "fine-tune"}).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(upload, range(6)))
    assert sorted(statuses) == [200] + [429] * 5, statuses
    assert tenant.counts() == (1, 0, 1)
    with session_scope(settings) as session:
        stored = session.scalar(select(func.sum(File.bytes)).where(File.tenant_id == tenant.tenant_id))
    assert stored == len(DATASET)


def test_zero_turns_the_caps_off(settings):
    off = settings.model_copy(update={"max_active_jobs_per_tenant": 0, "max_stored_bytes_per_tenant": 0})
    with TestClient(recording_app(off)) as client:
        tenant = make_tenant(client, settings)
        assert all(tenant.create_job().status_code == 200 for _ in range(3))


def test_the_docs_state_the_caps_defaults():
    """The defaults are written once, in Settings; the table of docs/service.md must say the same."""
    from store.settings import Settings

    table = page_section(DOCS / "service.md", "## API keys, limits per tenant and metrics")
    defaults = Settings.model_fields
    assert f"| `MAX_ACTIVE_JOBS_PER_TENANT` | {defaults['max_active_jobs_per_tenant'].default} |" in table
    assert f"| `MAX_STORED_BYTES_PER_TENANT` | {defaults['max_stored_bytes_per_tenant'].default} " in table
    created = f"{defaults['max_jobs_created_per_tenant'].default} / {defaults['job_creation_window_seconds'].default}"
    assert f"| `MAX_JOBS_CREATED_PER_TENANT` / `JOB_CREATION_WINDOW_SECONDS` | {created} |" in table
    rate = f"{defaults['rate_limit_per_minute'].default} / {defaults['rate_limit_burst'].default}"
    assert f"| `RATE_LIMIT_PER_MINUTE` / `RATE_LIMIT_BURST` | {rate} |" in table
