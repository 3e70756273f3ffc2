"""Another tenant's objects are indistinguishable from missing ones: every read, download and
cancel is 404, and nothing of theirs appears in lists."""

from __future__ import annotations

import pytest

from tests.api.test_artifacts import finish_with_artifacts

JOB_PATHS = ["", "/events", "/checkpoints", "/metrics", "/artifacts", "/artifacts/adapter/archive",
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
