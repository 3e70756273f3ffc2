"""Downloads: artifact listing, per-file Range, whole-artifact tar, result files, big streams."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import httpx

from store import jobs as job_store
from store.storage import LocalStorage, job_key
from tests.support.artifacts import ADAPTER_FILES, finish_with_artifacts
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
