"""A checkpoint's adapter downloaded on its own (issue #26): a tar of the PEFT files only, single
files with Range, and 404s for the optimizer state, a pruned checkpoint and another tenant's."""

from __future__ import annotations

import io
import os
import tarfile

from store import jobs as job_store
from store.storage import LocalStorage, job_key
from tests.support.artifacts import ADAPTER_FILES

OPTIMIZER = os.urandom(50_000)  # a checkpoint's folder also holds the optimizer's state: never offered


def _running_job_with_checkpoints(tenant, worker, storage, steps=(2, 4)) -> tuple[str, dict[int, dict]]:
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    for step in steps:
        key = job_key(tenant.tenant_id, job_id, "checkpoints", f"attempt-{worker.attempt}", f"step-{step}")
        for path, data in (ADAPTER_FILES | {"optimizer.pt": OPTIMIZER}).items():
            storage.put_stream(f"{key}/{path}", [data])
        worker.call(job_store.add_checkpoint, job_id=job_id, step=step, storage_key=key)
    listed = tenant.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    return job_id, {c["step_number"]: c for c in listed}


def test_checkpoint_archive_and_files_with_range(tenant, other_tenant, worker, settings):
    storage = LocalStorage(settings.storage_url)
    job_id, checkpoints = _running_job_with_checkpoints(tenant, worker, storage)
    base = f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoints[4]['id']}"
    archive = tenant.get(f"{base}/archive")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/x-tar"
    assert int(archive.headers["content-length"]) == len(archive.content)
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == {
            f"step-4/{p}": d for p, d in ADAPTER_FILES.items()}
    tail = tenant.get(f"{base}/archive", headers={"Range": "bytes=1000-"})
    assert tail.status_code == 206 and tail.content == archive.content[1000:]
    weights = ADAPTER_FILES["adapter_model.safetensors"]
    assert tenant.get(f"{base}/files/adapter_model.safetensors").content == weights
    part = tenant.get(f"{base}/files/adapter_model.safetensors", headers={"Range": "bytes=100-2099"})
    assert part.status_code == 206 and part.content == weights[100:2100]
    assert part.headers["content-range"] == f"bytes 100-2099/{len(weights)}"
    for path in ("optimizer.pt", "adapter_config.json/x", "%2E%2E/step-2/adapter_config.json"):
        response = tenant.get(f"{base}/files/{path}")
        assert response.status_code == 404 and response.json()["error"]["param"] == "path", path
    # another tenant, another job's checkpoint id, an unknown id: 404 naming what is missing
    assert other_tenant.get(f"{base}/archive").status_code == 404
    other_job, _ = _running_job_with_checkpoints(tenant, worker, storage, steps=(1,))
    wrong_job = tenant.get(f"/v1/fine_tuning/jobs/{other_job}/checkpoints/{checkpoints[4]['id']}/archive")
    assert wrong_job.status_code == 404 and wrong_job.json()["error"]["param"] == "checkpoint_id"
    assert tenant.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints/ftckpt-nope/archive").status_code == 404
    # pruned: the row stays, the files do not
    storage.delete_prefix(job_key(tenant.tenant_id, job_id, "checkpoints", f"attempt-{worker.attempt}", "step-2"))
    pruned = tenant.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoints[2]['id']}/archive")
    assert pruned.status_code == 404 and "keep_checkpoints" in pruned.json()["error"]["message"]
