"""jobs.settings is a `JobSpec` (dora_contract/job_spec.py): written by the API, read through the
model only, and rows of the shape written before it (version 0) still load, upgraded on read."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from api.present import openai_hyperparameters
from dora_contract import DEFAULT_OUTPUTS, JOB_SPEC_VERSION, JobSpec, RunSettings, SettingError
from store.db import session_scope
from store.models import File, Job
from tests.support.api_client import BASE_MODELS
from tests.support.job_specs import version_0

RUN = RunSettings.from_data({"adapter": {"method": "lora", "rank": 4}, "training": {"epochs": 2, "seed": 9},
                             "outputs": ["adapter", "gguf"]})
SPEC = {"version": 1, "run": RUN.model_dump(mode="json"),
        "base_model": {"source": "./var/models/tiny-llama", "public_id": "org/tiny"},
        "training_file": {"id": "file-t", "storage_key": "tenants/t/files/file-t", "format": "chat", "rows": 3},
        "validation_file": None, "evals": [], "parent": None, "integrations": []}  # the last three: their defaults


def _stored(settings, job_id: str) -> dict:
    with session_scope(settings) as session:
        return session.get(Job, job_id).settings


def _store(settings, job_id: str, stored: dict) -> None:
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(settings=stored))
        session.commit()


def test_a_version_0_mapping_reads_as_the_same_spec():
    old = version_0(SPEC)
    assert "version" not in old and old["outputs"] == ["adapter", "gguf"]
    assert JobSpec.from_data(old) == JobSpec.from_data(SPEC)
    assert JobSpec.from_data(old).model_dump(mode="json") == SPEC  # name and the derived values dropped
    # a version 0 run_config without outputs takes the top-level ones (the worker uploaded those)
    without = old | {"run_config": {k: v for k, v in SPEC["run"].items() if k != "outputs"}}
    assert JobSpec.from_data(without).run.outputs == ("adapter", "gguf")
    # rows stored before registrations had a public id: null, the worker derives it
    no_public = old | {"base_model": {"name": "tiny-llama", "path": "./var/models/tiny-llama"}}
    assert JobSpec.from_data(no_public).base_model.public_id is None
    broken = old | {"training_file": {"id": "file-t"}}
    with pytest.raises(SettingError, match=r"^training_file\.storage_key: is required"):
        JobSpec.from_data(broken)  # named as in a version 1 row


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda s: s["training_file"].pop("storage_key"), "training_file.storage_key", "is required"),
    (lambda s: s.pop("run"), "run", "is required"),
    (lambda s: s.update(outputs=["adapter"]), "outputs", "unknown setting"),  # stored once, in run
    (lambda s: s.update(version=2), "version", "Input should be 1"),
    (lambda s: s["run"]["training"].update(validation_split=0.1) or s.update(validation_file=s["training_file"]),
     "validation_split", "not both"),
])
def test_an_invalid_spec_is_one_setting_error_naming_the_field(change, field, message):
    broken = JobSpec.from_data(SPEC).model_dump(mode="json")
    change(broken)
    with pytest.raises(SettingError) as raised:
        JobSpec.from_data(broken)
    assert raised.value.field == field and message in raised.value.message, raised.value


def test_an_api_created_job_stores_a_valid_job_spec(tenant, settings):
    validation = tenant.file_id()
    job = tenant.job({"method": {"type": "dora", "dora": {"rank": 4, "hyperparameters": {"n_epochs": 2}}},
                      "outputs": ["adapter"], "validation_file": validation, "seed": 3})
    stored = _stored(settings, job["id"])
    spec = JobSpec.from_data(stored)
    assert stored == spec.model_dump(mode="json") and spec.version == stored["version"] == JOB_SPEC_VERSION
    assert "run_config" not in stored and "outputs" not in stored and "openai_hyperparameters" not in stored
    assert spec.run.outputs == ("adapter",) and spec.run.adapter.rank == 4 and spec.run.training.epochs == 2
    assert spec.run.training.seed == job["seed"] == 3
    assert spec.base_model.source == BASE_MODELS["tiny-llama"] and spec.base_model.public_id == "tiny-llama"
    with session_scope(settings) as session:
        files = {row.id: row for row in session.scalars(select(File).where(File.id.in_([job["training_file"],
                                                                                          validation])))}
    for ref in (spec.training_file, spec.validation_file):
        row = files[ref.id]
        assert (ref.storage_key, ref.format, ref.rows) == (row.storage_key, row.format, row.rows)
        assert ref.format == "chat" and ref.rows == 3
    assert (spec.training_file.id, spec.validation_file.id) == (job["training_file"], validation)
    # the job shows what the spec holds: the outputs once, the OpenAI hyperparameters derived
    assert job["outputs"] == ["adapter"] and job["hyperparameters"] == openai_hyperparameters(spec.run)
    assert tenant.job()["outputs"] == list(DEFAULT_OUTPUTS)


def test_a_stored_job_of_the_version_0_shape_still_loads(tenant, settings):
    job = tenant.job({"method": {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3, "learning_rate_multiplier": 0.5}}}, "outputs": ["adapter", "merged"]})
    current = _stored(settings, job["id"])
    old = version_0(current)
    _store(settings, job["id"], old)
    assert _stored(settings, job["id"]) == old  # the row as the previous release wrote it
    assert JobSpec.from_data(old) == JobSpec.from_data(current)
    shown = tenant.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert shown == job  # outputs, hyperparameters and all shown as before
    assert shown["hyperparameters"] == old["openai_hyperparameters"] and shown["outputs"] == old["outputs"]
    assert _stored(settings, job["id"]) == old  # upgraded on read, not rewritten
