"""The worker reads a job's settings through `JobSpec` only: the run it builds and the outputs it
uploads are the typed spec's, for a version 0 row too, and a broken spec fails the job at once
with the field named (not a KeyError, not retried)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from dora_contract import BaseModelRef, JobSpec, RunSettings
from dora_core.training import RunConfig
from store.db import session_scope
from store.models import Job
from store.storage import open_storage
from tests.support.job_specs import version_0
from worker.job import JobAttempt, run_job

RUN = RunSettings.from_data({"adapter": {"method": "lora", "rank": 2, "alpha": 4, "target_modules": ["q_proj"]},
                             "training": {"max_steps": 2, "micro_batch_size": 2, "max_seq_len": 64, "seed": 11},
                             "outputs": ["merged"]})


def _store(service, job_id: str, stored: dict) -> None:
    with session_scope(service.settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(settings=stored))
        session.commit()


def _attempt(service, job_id: str) -> JobAttempt:
    return JobAttempt(service.settings, service.row(job_id), "test-host:1", open_storage(service.settings.storage_url),
                      publish=lambda *_: True, stop_requested=lambda: False)


@pytest.mark.parametrize("shape", ["version 1", "version 0"])
def test_the_worker_runs_and_uploads_what_the_typed_spec_says(service, tmp_path, shape):
    job_id = service.create(validation_file=service.upload())
    files = JobSpec.from_data(service.row(job_id).settings)  # the API's file refs: real storage keys
    typed = JobSpec(run=RUN, base_model=BaseModelRef(source="org/unregistered", public_id="org/tiny-public"),
                    training_file=files.training_file, validation_file=files.validation_file)
    stored = typed.model_dump(mode="json")
    _store(service, job_id, stored if shape == "version 1" else version_0(stored))

    attempt = _attempt(service, job_id)
    config = attempt.build_config()
    inputs = Path(service.settings.work_dir) / job_id / "inputs"
    assert config == RunConfig.from_dict(typed.run.model_dump() | {
        "base_model": service.settings.base_models["tiny-llama"],  # the current registration wins
        "base_model_id": "org/tiny-public", "train_file": str(inputs / "train.jsonl"),
        "validation_file": str(inputs / "validation.jsonl")})
    assert (inputs / "train.jsonl").is_file() and (inputs / "validation.jsonl").is_file()

    written = {name: tmp_path / name for name in ("adapter", "merged")}
    for folder in written.values():
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"w")
    assert [spec.name for spec in attempt.store_outputs({k: str(v) for k, v in written.items()})] == ["merged"]


def test_a_spec_missing_a_required_field_fails_the_job_naming_it(service):
    job_id = service.create(max_attempts=3)
    broken = service.row(job_id).settings
    del broken["training_file"]["storage_key"]
    _store(service, job_id, broken)

    assert run_job(job_id, settings=service.settings, publish=lambda *_: True) == "failed"
    row = service.row(job_id)
    assert row.attempt == 1 and row.status == "failed"  # not retried: it would fail the same way
    assert "training_file.storage_key" in row.error["message"] and "is required" in row.error["message"], row.error
    assert "KeyError" not in row.error["message"]
