"""A GGUF file registered as a base model: the worker converts it once, trains on it, and merges back.

The tiny model is exported to an f16 GGUF with our own writer (dora_core/gguf_export), registered
by its path in DORA_BASE_MODELS as an operator would, and a job through the real API and worker
trains on it. The merged model comes back in the GGUF's own dtype (f16) and exported again as
GGUF; its adapter names the registered name, not the file's path on the server.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import gguf
import pytest
import torch
from fastapi.testclient import TestClient

from dora_core.gguf_export import write_gguf
from dora_core.model_loading import load_base_model, load_tokenizer
from store.db import session_scope
from store.tenants import create_api_key
from tests.support.api_client import recording_app
from tests.support.jobs import dora_method
from tests.support.worker_service import Service
from worker.job import run_job

MODEL = "tiny-gguf"


@pytest.fixture
def gguf_service(settings, tiny_model_dir, tmp_path):
    model = load_base_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    exported = write_gguf(tmp_path / "exported", model, load_tokenizer(tiny_model_dir), file_type="f16")
    registered = settings.model_copy(update={
        "base_models": settings.base_models | {MODEL: str(exported)},
        "model_cache_dir": str(tmp_path / "model-cache")})
    app = recording_app(registered)
    with session_scope(registered) as session:
        key = create_api_key(session, tenant_name=f"t-{uuid.uuid4().hex[:10]}").key
    with TestClient(app) as client:
        yield Service(client=client, settings=registered, headers={"Authorization": f"Bearer {key}"},
                      published=app.state.published), exported, tmp_path / "model-cache"


def _extract(service: Service, job_id: str, name: str, into):
    archive = service.client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts/{name}/archive", headers=service.headers)
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(into, filter="data")
    return into / name


def test_a_registered_gguf_trains_and_merges_back(gguf_service, tmp_path):
    service, exported, cache = gguf_service
    job_id = service.create(method=dora_method(max_steps=4), model=MODEL, outputs=["adapter", "merged", "gguf"])
    assert run_job(job_id, settings=service.settings, publish=lambda *_: True) == "succeeded", service.get(job_id)
    (converted,) = cache.glob("gguf-*")  # converted once, by content hash
    assert json.loads((converted / "source.json").read_text())["dtype"] == "float16"

    adapter = _extract(service, job_id, "adapter", tmp_path / "out")
    merged = _extract(service, job_id, "merged", tmp_path / "out")
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == MODEL and str(exported) not in json.dumps(adapter_config)
    assert json.loads((merged / "config.json").read_text())["dtype"] == "float16"
    again = _extract(service, job_id, "gguf", tmp_path / "out") / "model.gguf"
    assert gguf.GGUFReader(again).fields["general.architecture"].contents() == "llama"

    # a second job on the same registration finds the converted folder: nothing converted again
    written = (converted / "source.json").stat().st_mtime_ns
    second = service.create(method=dora_method(max_steps=2), model=MODEL, outputs=["adapter"])
    assert run_job(second, settings=service.settings, publish=lambda *_: True) == "succeeded"
    assert (converted / "source.json").stat().st_mtime_ns == written and len(list(cache.glob("gguf-*"))) == 1
