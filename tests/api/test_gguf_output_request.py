"""Asking for the gguf output through the API: `gguf_type` from the run contract, and a base model
whose architecture the export does not support refused when the job is created (400 naming
`outputs`), before any training, with nothing stored."""

from __future__ import annotations

import json
import os

import gguf
import pytest
from fastapi.testclient import TestClient

from dora_contract import JobSpec, RunSettings
from store.base_models import registered_architecture
from store.db import session_scope
from store.models import Job
from store.settings import Settings
from tests.support.api_client import Tenant, recording_app


@pytest.fixture
def registered(settings, tenant, tmp_path):
    """The tenant's API with two more local base models: a gpt2-architecture folder and a qwen2 one
    (only their config.json is read at job creation)."""
    models = {}
    for name, model_type in (("tiny-gpt2", "gpt2"), ("tiny-qwen2", "qwen2")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        models[name] = str(folder)
    app = recording_app(settings.model_copy(update={"base_models": settings.base_models | models}))
    with TestClient(app) as client:
        yield Tenant(client=client, settings=settings, key=tenant.key, tenant_id=tenant.tenant_id,
                     headers=tenant.headers)


def _stored_run(tenant: Tenant, job: dict) -> RunSettings:
    """What the worker will hand to dora_core."""
    with session_scope(tenant.settings) as session:
        return JobSpec.from_data(session.get(Job, job["id"]).settings).run


def test_gguf_type_comes_from_the_contract(registered):
    job = registered.job({"outputs": ["adapter", "gguf"], "gguf_type": "q8_0"})
    assert job["outputs"] == ["adapter", "gguf"] and _stored_run(registered, job).gguf_type == "q8_0"
    default = registered.job({"outputs": ["gguf"]})
    assert _stored_run(registered, default).gguf_type == RunSettings.model_fields["gguf_type"].default
    response = registered.create_job({"outputs": ["gguf"], "gguf_type": "q4_0"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "gguf_type", response.text


def test_an_architecture_the_export_cannot_write_is_refused_at_creation(registered):
    before = registered.counts()
    response = registered.create_job({"model": "tiny-gpt2", "outputs": ["adapter", "gguf"]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "outputs" and "'gpt2'" in error["message"] and "llama" in error["message"]
    assert registered.counts()[1] == before[1]  # no job row
    # the same model without gguf, and a supported architecture with it, are accepted
    assert registered.create_job({"model": "tiny-gpt2", "outputs": ["adapter"]}).status_code == 200
    assert registered.create_job({"model": "tiny-qwen2", "outputs": ["gguf"]}).status_code == 200
    # a hub id cannot be read here: accepted, and the worker refuses it before training if need be
    assert registered.create_job({"model": "llama-3.2-1b", "outputs": ["gguf"]}).status_code == 200


def _write_gguf(path, architecture: str, name: str | None = None) -> None:
    """A header-only GGUF: `general.architecture`, and `general.name` when given (which changes its size)."""
    writer = gguf.GGUFWriter(path, architecture)
    if name:
        writer.add_name(name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_architecture_is_read_again_once_its_file_changes(tmp_path):
    path = tmp_path / "model.gguf"
    settings = Settings(base_models={"local-gguf": str(path)})
    _write_gguf(path, "llama")
    assert registered_architecture(settings, "local-gguf") == "llama"
    first = path.stat()

    # the same size and mtime: the header is not parsed again, so the cached answer stands
    _write_gguf(path, "qwen2")
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert path.stat().st_size == first.st_size
    assert registered_architecture(settings, "local-gguf") == "llama"
    # a newer mtime alone is a new version of the file
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns + 1_000_000_000))
    assert registered_architecture(settings, "local-gguf") == "qwen2"

    # a new size alone is one too (mtime put back to the one just read)
    second = path.stat()
    _write_gguf(path, "mistral", name="a name long enough to grow the header past its alignment" * 2)
    os.utime(path, ns=(second.st_atime_ns, second.st_mtime_ns))
    assert path.stat().st_size != second.st_size
    assert registered_architecture(settings, "local-gguf") == "mistral"
