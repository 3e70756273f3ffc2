"""Downloads: artifact listing, per-file Range, whole-artifact tar, result files, big streams."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import httpx

from store import jobs as job_store
from store.storage import LocalStorage, job_key
from tests.support.artifacts import ADAPTER_FILES, finish_with_artifacts, finish_with_stored_files
from tests.support.streaming import stream_download


def test_finished_job_lists_artifacts_and_result_files(tenant, worker, settings):
    job = finish_with_artifacts(tenant, worker, settings)
    assert job["status"] == "succeeded" and job["fine_tuned_model"].startswith("ft:tiny-llama:")
    assert job["trained_tokens"] == 1234 and len(job["result_files"]) == 1
    artifacts = tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts").json()["data"]
    assert [a["name"] for a in artifacts] == ["adapter"]
    adapter = artifacts[0]
    assert adapter["bytes"] == sum(len(v) for v in ADAPTER_FILES.values())
    assert {f["path"]: f["sha256"] for f in adapter["files"]} == {
        p: hashlib.sha256(d).hexdigest() for p, d in ADAPTER_FILES.items()}
    assert adapter["file_id"] == job["result_files"][0]
    models = [m["id"] for m in tenant.get("/v1/models").json()["data"]]
    assert job["fine_tuned_model"] in models and "tiny-llama" in models


def test_artifact_file_download_supports_range(tenant, worker, settings):
    job = finish_with_artifacts(tenant, worker, settings)
    url = f"/v1/fine_tuning/jobs/{job['id']}/artifacts/adapter/files/adapter_model.safetensors"
    data = ADAPTER_FILES["adapter_model.safetensors"]
    assert tenant.get(url).content == data
    part = tenant.get(url, headers={"Range": "bytes=1000-200999"})
    assert part.status_code == 206 and part.content == data[1000:201000]
    assert tenant.get(url.replace("adapter_model", "../../secret")).status_code == 404
    assert tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts/merged/files/x").status_code == 404


def test_whole_artifact_as_tar_and_through_the_files_api(tenant, worker, settings):
    job = finish_with_artifacts(tenant, worker, settings)
    archive = tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts/adapter/archive")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/x-tar"
    assert int(archive.headers["content-length"]) == len(archive.content)
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == {
            f"adapter/{p}": d for p, d in ADAPTER_FILES.items()}
    result_id = job["result_files"][0]
    meta = tenant.get(f"/v1/files/{result_id}").json()
    assert meta["purpose"] == "fine-tune-results" and meta["bytes"] == len(archive.content)
    assert tenant.get(f"/v1/files/{result_id}/content").content == archive.content
    tail = tenant.get(f"/v1/files/{result_id}/content", headers={"Range": "bytes=1500-"})
    assert tail.status_code == 206 and tail.content == archive.content[1500:]
    middle = tenant.get(f"/v1/files/{result_id}/content", headers={"Range": "bytes=700-299999"})
    assert middle.content == archive.content[700:300000]
    assert tenant.delete(f"/v1/files/{result_id}").status_code == 409


def test_large_download_streams_without_holding_the_file(tenant, worker, settings, server_url):
    """A 96 MiB artifact crosses a real server while Python allocations stay far below its size."""
    size = 96 * 1024 * 1024
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    storage = LocalStorage(settings.storage_url)
    prefix = job_key(tenant.tenant_id, job_id, "attempts", "1", "merged")
    block = os.urandom(1024 * 1024)
    storage.put_stream(f"{prefix}/model.safetensors", (block for _ in range(size // len(block))))
    spec = job_store.ArtifactSpec(name="merged", storage_prefix=prefix,
                                  files=[{"path": "model.safetensors", "bytes": size, "sha256": ""}])
    worker.call(job_store.finish_job, job_id=job_id, status="succeeded", artifacts=[spec])
    url = f"{server_url}/v1/fine_tuning/jobs/{job_id}/artifacts/merged/files/model.safetensors"
    received, digest, peak = stream_download(url, tenant.headers)
    assert received == size
    assert digest == hashlib.sha256(block * (size // len(block))).hexdigest()
    assert peak < 16 * 1024 * 1024, f"peak Python allocation {peak / 2**20:.1f} MiB while streaming"
    piece = httpx.get(url, headers=tenant.headers | {"Range": f"bytes={size - 10}-"}, timeout=30)
    assert piece.status_code == 206 and piece.content == block[-10:]


def test_result_file_and_models_through_the_openai_client(tenant, worker, settings, server_url):
    import openai

    job = finish_with_artifacts(tenant, worker, settings)
    client = openai.OpenAI(api_key=tenant.key, base_url=f"{server_url}/v1", max_retries=0)
    archive = client.files.content(client.fine_tuning.jobs.retrieve(job["id"]).result_files[0]).read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == sorted(f"adapter/{p}" for p in ADAPTER_FILES)
    assert client.models.retrieve(job["fine_tuned_model"]).owned_by != "system"
    assert client.models.retrieve("tiny-llama").owned_by == "system"


def test_downloads_of_an_unfinished_job_say_to_wait_and_a_missing_output_names_those_there_are(
        tenant, worker, settings, client):
    """The README's curl block run before the job finished was a bare 404 "No such artifact: 'adapter'"."""
    job_id = tenant.job()["id"]
    urls = [f"/v1/fine_tuning/jobs/{{}}/artifacts/adapter/{rest}" for rest in ("archive", "files/adapter_config.json")]
    for status in ("queued", "running"):
        if status == "running":
            worker.claim(job_id)
        for url in urls:
            response = tenant.get(url.format(job_id))
            assert response.status_code == 409, response.text
            error = response.json()["error"]
            assert error["code"] == "job_not_finished" and error["type"] == "invalid_request_error", error
            assert f"Job {job_id} is {status}" in error["message"], error
            assert f"poll GET /v1/fine_tuning/jobs/{job_id} until status is succeeded" in error["message"], error
    storage = LocalStorage(settings.storage_url)
    finished = finish_with_stored_files(tenant, worker, storage, {"adapter_config.json": b"{}"})
    missing = tenant.get(f"/v1/fine_tuning/jobs/{finished['id']}/artifacts/merged/archive")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "artifact_not_found", missing.text
    assert missing.json()["error"]["message"] == (f"No such artifact: 'merged': job {finished['id']} is succeeded and "
                                                  "its outputs are adapter")
    cancelled = tenant.job()["id"]
    assert tenant.post(f"/v1/fine_tuning/jobs/{cancelled}/cancel").status_code == 200
    response = tenant.get(urls[0].format(cancelled))
    assert response.status_code == 404 and "is cancelled and it has no outputs" in response.json()["error"]["message"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/fine_tuning/jobs/{job_id}/artifacts/{name}/archive",
                 "/v1/fine_tuning/jobs/{job_id}/artifacts/{name}/files/{path}"):
        assert "job_not_finished" in paths[path]["get"]["responses"]["409"]["description"], path
