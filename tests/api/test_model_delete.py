"""DELETE /v1/models/{id} (issue #26) with the official openai client: the model, its outputs and
checkpoints leave storage and every read of them 404s; the tenant's stored bytes go down by the
results' size (an upload refused before fits after); bad ids are 4xx naming `model`."""

from __future__ import annotations

import openai
import pytest
from fastapi.testclient import TestClient

from store import jobs as job_store
from store.db import session_scope
from store.models import Job
from store.quotas import stored_bytes
from store.storage import LocalStorage, job_key
from tests.support.api_client import CHAT_ROW, FakeWorker, make_tenant, recording_app
from tests.support.artifacts import ADAPTER_FILES, finish_with_stored_files
from tests.support.services import running_server

CHAT = "/v1/chat/completions"
SECOND_UPLOAD = CHAT_ROW * 2000  # ~190 kB: fits the quota only once the results (~300 kB) are gone
ROOM = 250_000  # the quota's bytes beyond the training file and SECOND_UPLOAD: less than the results take


def _chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _finished_with_checkpoint(tenant, worker: FakeWorker, storage: LocalStorage) -> dict:
    """A job that stored a checkpoint at step 2 while running, then finished with the adapter."""
    job = tenant.job()
    worker.claim(job["id"])
    key = job_key(tenant.tenant_id, job["id"], "checkpoints", f"attempt-{worker.attempt}", "step-2")
    for path, data in ADAPTER_FILES.items():
        storage.put_stream(f"{key}/{path}", [data])
    worker.call(job_store.add_checkpoint, job_id=job["id"], step=2, storage_key=key)
    return finish_with_stored_files(tenant, worker, storage, job_id=job["id"])


@pytest.fixture(scope="module")
def limited(settings):
    """An app over HTTP whose storage quota holds the training file and SECOND_UPLOAD plus ROOM."""
    quota = len(CHAT_ROW * 3) + len(SECOND_UPLOAD) + ROOM
    app = recording_app(settings.model_copy(update={"max_stored_bytes_per_tenant": quota}))
    with TestClient(app) as client, running_server(app) as url:
        yield client, url


def test_delete_with_the_openai_client_frees_storage_and_404s_after(limited, settings):
    client, url = limited
    tenant, worker, storage = make_tenant(client, settings), FakeWorker(settings), LocalStorage(settings.storage_url)
    job = _finished_with_checkpoint(tenant, worker, storage)
    model, result_file = job["fine_tuned_model"], job["result_files"][0]
    checkpoint = tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
    oai = openai.OpenAI(api_key=tenant.key, base_url=f"{url}/v1", max_retries=0, timeout=30)
    with session_scope(settings) as session:
        before = stored_bytes(session, tenant_id=tenant.tenant_id)
    result_bytes = oai.files.retrieve(result_file).bytes
    assert before == len(CHAT_ROW * 3) + result_bytes  # the results count
    with pytest.raises(openai.RateLimitError) as full:
        oai.files.create(file=("more.jsonl", SECOND_UPLOAD), purpose="fine-tune")
    assert "DELETE /v1/models/" in full.value.body["message"]
    assert oai.models.retrieve(model).id == model
    assert tenant.post(CHAT, json=_chat(model)).json()["error"]["code"] == "inference_not_configured"

    deleted = oai.models.delete(model)
    assert (deleted.id, deleted.object, deleted.deleted) == (model, "model", True)

    assert storage.list(job_key(tenant.tenant_id, job["id"])) == []  # outputs and checkpoints
    with session_scope(settings) as session:
        assert stored_bytes(session, tenant_id=tenant.tenant_id) == before - result_bytes
        assert session.get(Job, job["id"]).model_deleted_at is not None
    assert oai.files.create(file=("more.jsonl", SECOND_UPLOAD), purpose="fine-tune").bytes == len(SECOND_UPLOAD)
    for call in (lambda: oai.models.retrieve(model), lambda: oai.models.delete(model),
                 lambda: oai.files.retrieve(result_file)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert model not in [m.id for m in oai.models.list()]
    for served in (model, checkpoint["fine_tuned_model_checkpoint"]):
        response = tenant.post(CHAT, json=_chat(served))
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found", served
    assert tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts/adapter/archive").status_code == 404
    assert tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts").json()["data"] == []
    assert tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"] == []
    kept = oai.fine_tuning.jobs.retrieve(job["id"])  # the job itself is history and stays
    assert (kept.status, kept.fine_tuned_model, kept.result_files) == ("succeeded", model, [])


def test_bad_deletes_are_4xx_naming_model_and_change_nothing(tenant, other_tenant, worker, settings):
    storage = LocalStorage(settings.storage_url)
    job = _finished_with_checkpoint(tenant, worker, storage)
    model = job["fine_tuned_model"]
    stored = storage.list(job_key(tenant.tenant_id, job["id"]))
    near_miss = model[:-1] + ("y" if model.endswith("z") else "z")  # one character off, never the model itself
    cases = [(tenant, "tiny-llama", 400, "invalid_value"), (tenant, f"{model}:ckpt-step-2", 400, "invalid_value"),
             (other_tenant, model, 404, "model_not_found"), (tenant, near_miss, 404, "model_not_found"),
             (tenant, "no-such-model", 404, "model_not_found")]
    for who, name, status, code in cases:
        response = who.delete(f"/v1/models/{name}")
        error = response.json()["error"]
        assert (response.status_code, error["code"], error["param"]) == (status, code, "model"), (name, response.text)
    assert storage.list(job_key(tenant.tenant_id, job["id"])) == stored and len(stored) == 4
    assert model in [m["id"] for m in tenant.get("/v1/models").json()["data"]]


class _FailingOnce(LocalStorage):
    """The settings' local storage whose first prefix deletion fails (an S3 outage, a full disk)."""

    failures = 1

    def delete_prefix(self, prefix: str) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("storage unavailable")
        super().delete_prefix(prefix)


def test_a_deletion_the_storage_refused_is_finished_by_the_same_delete_again(settings):
    app = recording_app(settings)
    with TestClient(app) as client:
        app.state.storage = storage = _FailingOnce(settings.storage_url)
        tenant, worker = make_tenant(client, settings), FakeWorker(settings)
        job = _finished_with_checkpoint(tenant, worker, storage)
        model = job["fine_tuned_model"]
        first = tenant.delete(f"/v1/models/{model}")
        assert first.status_code == 503 and first.headers["Retry-After"], first.text
        assert "send the same DELETE again" in first.json()["error"]["message"]
        # already gone for every read; its files and their bytes are still there until the retry
        assert tenant.get(f"/v1/models/{model}").status_code == 404
        assert len(storage.list(job_key(tenant.tenant_id, job["id"]))) == 4
        assert tenant.get(f"/v1/files/{job['result_files'][0]}").status_code == 200
        assert tenant.delete(f"/v1/models/{model}").json()["deleted"] is True
        assert storage.list(job_key(tenant.tenant_id, job["id"])) == []
        assert tenant.get(f"/v1/files/{job['result_files'][0]}").status_code == 404
        assert tenant.delete(f"/v1/models/{model}").status_code == 404


def test_a_model_an_active_job_continues_from_cannot_be_deleted(tenant, worker, settings):
    """409 while a job created from the model (or from one of its checkpoints) is queued or running;
    deletable once that job has ended."""
    storage = LocalStorage(settings.storage_url)
    job = _finished_with_checkpoint(tenant, worker, storage)
    model = job["fine_tuned_model"]
    checkpoint = tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
    children = [tenant.job({"model": parent}) for parent in (model, checkpoint["fine_tuned_model_checkpoint"])]
    worker.claim(children[1]["id"])  # one queued, one running
    for child in children:
        response = tenant.delete(f"/v1/models/{model}")
        error = response.json()["error"]
        assert (response.status_code, error["code"], error["param"]) == (409, "model_in_use", "model"), response.text
        assert any(c["id"] in error["message"] for c in children)
        assert tenant.post(f"/v1/fine_tuning/jobs/{child['id']}/cancel").status_code == 200
    assert worker.call(job_store.finish_job, job_id=children[1]["id"], status="cancelled")  # its worker stops
    assert tenant.get(f"/v1/models/{model}").status_code == 200  # nothing changed by the refusals
    assert len(storage.list(job_key(tenant.tenant_id, job["id"]))) == 4
    assert tenant.delete(f"/v1/models/{model}").json()["deleted"] is True


def test_a_delete_between_resolving_the_parent_and_creating_the_job_refuses_the_job(tenant, worker, settings,
                                                                                 monkeypatch):
    """The parent is resolved before the tenant's lock; a delete that lands in that window (simulated by
    deleting right after the resolution) makes the creation a 400 naming `model`, and no job is made."""
    from api.services import parents

    storage = LocalStorage(settings.storage_url)
    model = _finished_with_checkpoint(tenant, worker, storage)["fine_tuned_model"]
    resolve = parents.resolve_parent

    def resolve_then_deleted_meanwhile(*args, **kwargs):
        found = resolve(*args, **kwargs)
        assert tenant.delete(f"/v1/models/{model}").json()["deleted"] is True  # another request's delete
        return found

    monkeypatch.setattr(parents, "resolve_parent", resolve_then_deleted_meanwhile)
    before = len(tenant.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"])
    response = tenant.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": tenant.file_id()})
    error = response.json()["error"]
    assert (response.status_code, error["param"], error["code"]) == (400, "model", "model_not_found"), response.text
    assert len(tenant.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]) == before
