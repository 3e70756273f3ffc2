"""The API with S3 artifact storage (a moto server subprocess): uploads, per-file Range, tar
archives and result files, and a large download streamed through a real server from S3."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from store import jobs as job_store
from store.storage import S3Storage, file_key, job_key
from tests.support.api_client import CHAT_ROW, make_tenant
from tests.support.artifacts import finish_with_stored_files
from tests.support.services import running_server
from tests.support.streaming import stream_download

MIB = 1024 * 1024
ADAPTER_FILES = {"adapter_config.json": b'{"use_dora": true, "r": 8}',
                 "adapter_model.safetensors": os.urandom(300_000),
                 "empty.txt": b""}


@pytest.fixture(scope="module")
def s3_settings(settings, s3_bucket, s3_endpoint):
    return settings.model_copy(update={"storage_url": f"s3://{s3_bucket}/api-{os.urandom(4).hex()}",
                                       "s3_endpoint_url": s3_endpoint})


@pytest.fixture(scope="module")
def s3_app(s3_settings):
    app = create_app(s3_settings)
    app.state.publish = lambda job_id, gpus=1: True
    assert isinstance(app.state.storage, S3Storage)
    return app


@pytest.fixture(scope="module")
def s3_client(s3_app):
    with TestClient(s3_app) as client:
        yield client


@pytest.fixture
def s3_tenant(s3_client, s3_settings):
    return make_tenant(s3_client, s3_settings)


def test_uploads_live_in_the_bucket_and_download_with_range(s3_tenant, s3_app):
    storage: S3Storage = s3_app.state.storage
    content = CHAT_ROW * 5
    file_id = s3_tenant.file_id(content)
    key = file_key(s3_tenant.tenant_id, file_id)
    assert storage.list(f"tenants/{s3_tenant.tenant_id}") == [key] and storage.size(key) == len(content)
    assert s3_tenant.get(f"/v1/files/{file_id}/content").content == content
    part = s3_tenant.get(f"/v1/files/{file_id}/content", headers={"Range": "bytes=10-29"})
    assert part.status_code == 206 and part.content == content[10:30]
    assert part.headers["content-range"] == f"bytes 10-29/{len(content)}"
    assert s3_tenant.get(f"/v1/files/{file_id}/content", headers={"Range": "bytes=-7"}).content == content[-7:]
    rejected = s3_tenant.upload(b'{"messages": "not a list"}\n')
    assert rejected.status_code == 400
    assert s3_tenant.delete(f"/v1/files/{file_id}").status_code == 200
    assert storage.list(f"tenants/{s3_tenant.tenant_id}") == []  # neither the rejected nor the deleted file


def test_artifact_files_with_range_and_the_tar_from_s3(s3_tenant, worker, s3_app):
    job = finish_with_stored_files(s3_tenant, worker, s3_app.state.storage, ADAPTER_FILES)
    base = f"/v1/fine_tuning/jobs/{job['id']}/artifacts/adapter"
    data = ADAPTER_FILES["adapter_model.safetensors"]
    assert s3_tenant.get(f"{base}/files/adapter_model.safetensors").content == data
    part = s3_tenant.get(f"{base}/files/adapter_model.safetensors", headers={"Range": "bytes=1000-200999"})
    assert part.status_code == 206 and part.content == data[1000:201000]
    assert s3_tenant.get(f"{base}/files/empty.txt").content == b""
    archive = s3_tenant.get(f"{base}/archive")
    assert archive.status_code == 200 and int(archive.headers["content-length"]) == len(archive.content)
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == {
            f"adapter/{p}": d for p, d in ADAPTER_FILES.items()}
    middle = s3_tenant.get(f"{base}/archive", headers={"Range": "bytes=700-299999"})
    assert middle.status_code == 206 and middle.content == archive.content[700:300000]
    result = s3_tenant.get(f"/v1/files/{job['result_files'][0]}/content", headers={"Range": "bytes=1500-"})
    assert result.status_code == 206 and result.content == archive.content[1500:]


def test_cross_tenant_downloads_are_404_on_s3(s3_tenant, s3_client, s3_settings, worker, s3_app):
    job = finish_with_stored_files(s3_tenant, worker, s3_app.state.storage, ADAPTER_FILES)
    other = make_tenant(s3_client, s3_settings)
    base = f"/v1/fine_tuning/jobs/{job['id']}/artifacts/adapter"
    for path in (f"{base}/archive", f"{base}/files/adapter_config.json", f"/v1/files/{job['result_files'][0]}/content"):
        assert other.get(path).status_code == 404


def test_large_download_streams_from_s3_without_holding_the_file(s3_tenant, worker, s3_app):
    """A 32 MiB artifact (a multipart upload) crosses a real server from S3 in bounded memory."""
    size, block = 32 * MIB, os.urandom(MIB)
    storage: S3Storage = s3_app.state.storage
    job_id = s3_tenant.job()["id"]
    worker.claim(job_id)
    prefix = job_key(s3_tenant.tenant_id, job_id, "attempts", "1", "merged")
    storage.put_stream(f"{prefix}/model.safetensors", (block for _ in range(size // MIB)))
    spec = job_store.ArtifactSpec(name="merged", storage_prefix=prefix,
                                  files=[{"path": "model.safetensors", "bytes": size, "sha256": ""}])
    worker.call(job_store.finish_job, job_id=job_id, status="succeeded", artifacts=[spec])
    with running_server(s3_app) as server_url:
        url = f"{server_url}/v1/fine_tuning/jobs/{job_id}/artifacts/merged/files/model.safetensors"
        received, digest, peak = stream_download(url, s3_tenant.headers)
        piece = httpx.get(url, headers=s3_tenant.headers | {"Range": f"bytes={size - 10}-"}, timeout=30)
    assert received == size
    assert digest == hashlib.sha256(block * (size // MIB)).hexdigest()
    assert peak < 16 * MIB, f"peak Python allocation {peak / MIB:.1f} MiB while streaming from S3"
    assert piece.status_code == 206 and piece.content == block[-10:]


def test_deleting_a_model_removes_its_outputs_and_checkpoints_from_the_bucket(s3_tenant, s3_client, s3_settings,
                                                                               worker, s3_app):
    storage: S3Storage = s3_app.state.storage
    job_id = s3_tenant.job()["id"]
    worker.claim(job_id)
    checkpoint = job_key(s3_tenant.tenant_id, job_id, "checkpoints", f"attempt-{worker.attempt}", "step-1")
    storage.put_stream(f"{checkpoint}/adapter_model.safetensors", [b"weights"])
    worker.call(job_store.add_checkpoint, job_id=job_id, step=1, storage_key=checkpoint)
    job = finish_with_stored_files(s3_tenant, worker, storage, ADAPTER_FILES, job_id=job_id)
    # a sibling whose key begins with the job's id must survive a prefix deletion
    sibling = job_key(s3_tenant.tenant_id, f"{job_id}0", "keep.bin")
    storage.put_stream(sibling, [b"keep"])
    assert len(storage.list(job_key(s3_tenant.tenant_id, job_id))) == 1 + len(ADAPTER_FILES)
    deleted = s3_tenant.delete(f"/v1/models/{job['fine_tuned_model']}")
    assert deleted.json() == {"id": job["fine_tuned_model"], "object": "model", "deleted": True}
    assert storage.list(job_key(s3_tenant.tenant_id, job_id)) == []
    assert storage.list(f"tenants/{s3_tenant.tenant_id}") == sorted([
        sibling, file_key(s3_tenant.tenant_id, job["training_file"])])
    assert s3_tenant.delete(f"/v1/models/{job['fine_tuned_model']}").status_code == 404
