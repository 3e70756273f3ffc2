"""Jobs finished by the fake worker with artifact files put straight into storage (no training)."""

from __future__ import annotations

import hashlib
import os

from store import jobs as job_store
from store.storage import LocalStorage, job_key

ADAPTER_FILES = {"adapter_config.json": b'{"use_dora": true, "r": 8}',
                 "adapter_model.safetensors": os.urandom(300_000)}


def finish_with_stored_files(tenant, worker, storage, files: dict[str, bytes] = ADAPTER_FILES,
                             name: str = "adapter", *, job_id: str | None = None, **finish) -> dict:
    """A job of `tenant` finished by `worker` with one artifact whose files are put in `storage`
    (`job_id`: that job, already claimed by `worker`; else a new one)."""
    if job_id is None:
        job_id = tenant.job()["id"]
        worker.claim(job_id)
    prefix = job_key(tenant.tenant_id, job_id, "attempts", str(worker.attempt), name)
    entries = []
    for path, data in files.items():
        storage.put_stream(f"{prefix}/{path}", [data])
        entries.append({"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    spec = job_store.ArtifactSpec(name=name, storage_prefix=prefix, files=entries)
    assert worker.call(job_store.finish_job, job_id=job_id, status="succeeded", artifacts=[spec], **finish)
    return tenant.get(f"/v1/fine_tuning/jobs/{job_id}").json()


def finish_with_artifacts(tenant, worker, settings, files: dict[str, bytes] = ADAPTER_FILES,
                          name: str = "adapter") -> dict:
    """finish_with_stored_files on the settings' local storage, with 1234 trained tokens."""
    return finish_with_stored_files(tenant, worker, LocalStorage(settings.storage_url), files, name,
                                    trained_tokens=1234)
