"""Another tenant's objects are indistinguishable from missing ones: every read, download and
cancel is 404, and nothing of theirs appears in lists."""

from __future__ import annotations

import pytest

from tests.support.artifacts import finish_with_artifacts

JOB_PATHS = ["", "/events", "/checkpoints", "/metrics", "/samples", "/artifacts", "/artifacts/adapter/archive",
             "/artifacts/adapter/files/adapter_config.json"]


@pytest.fixture
def owner_job(tenant, worker, settings):
    return finish_with_artifacts(tenant, worker, settings)


def test_cross_tenant_job_reads_downloads_and_cancel_are_404(owner_job, tenant, other_tenant):
    job_id = owner_job["id"]
    for suffix in JOB_PATHS:
        assert tenant.get(f"/v1/fine_tuning/jobs/{job_id}{suffix}").status_code == 200, suffix
        response = other_tenant.get(f"/v1/fine_tuning/jobs/{job_id}{suffix}")
        assert response.status_code == 404, suffix
        assert response.json()["error"]["message"] == f"No such job: '{job_id}'"
    assert other_tenant.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 404


def test_cross_tenant_file_reads_downloads_and_deletes_are_404(owner_job, tenant, other_tenant):
    uploaded = tenant.file_id()
    for file_id in (uploaded, owner_job["result_files"][0]):
        for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
            assert other_tenant.get(path).status_code == 404
        assert other_tenant.delete(f"/v1/files/{file_id}").status_code == 404
        assert tenant.get(f"/v1/files/{file_id}").status_code == 200


def test_lists_show_only_the_callers_objects(owner_job, tenant, other_tenant):
    assert other_tenant.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert other_tenant.get("/v1/files").json()["data"] == []
    models = [m["id"] for m in other_tenant.get("/v1/models").json()["data"]]
    assert owner_job["fine_tuned_model"] not in models
    # a cursor naming another tenant's job reveals nothing either
    page = other_tenant.get("/v1/fine_tuning/jobs", params={"after": owner_job["id"]}).json()
    assert page["data"] == []


def _revoke(settings, key: str) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import update

    from store.db import session_scope
    from store.models import ApiKey
    from store.tenants import hash_key

    with session_scope(settings) as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=datetime.now(UTC)))
        session.commit()


def test_a_revoked_key_stops_working_within_the_auth_cache_ttl(settings):
    """Key lookups are cached per process for DORA_AUTH_CACHE_SECONDS; a revocation takes effect
    once the cached entry expires, never later."""
    import time

    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.support.api_client import make_tenant

    ttl = 0.5
    with TestClient(create_app(settings.model_copy(update={"auth_cache_seconds": ttl}))) as client:
        tenant = make_tenant(client, settings)
        job_id = tenant.job()["id"]
        assert tenant.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200  # cached from here
        _revoke(settings, tenant.key)
        revoked_at = time.monotonic()
        statuses = []
        while time.monotonic() - revoked_at < ttl + 0.5:
            statuses.append((time.monotonic() - revoked_at, tenant.get("/v1/models").status_code))
            time.sleep(0.05)
    # the entry was cached before the revocation, so it expires before revoked_at + ttl: every request
    # sent after that is refused (requests sent earlier may still pass; that is the documented delay)
    after_ttl = [status for at, status in statuses if at > ttl]
    assert after_ttl and set(after_ttl) == {401}, statuses


def test_with_no_auth_cache_a_revoked_key_fails_at_once(tenant, settings):
    job_id = tenant.job()["id"]
    assert tenant.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200
    _revoke(settings, tenant.key)
    response = tenant.get(f"/v1/fine_tuning/jobs/{job_id}")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
