"""The official `openai` client, `base_url` pointed at a real uvicorn server, works end to end."""

from __future__ import annotations

import io

import openai
import pytest

from store import jobs as job_store
from tests.support.api_client import CHAT_ROW


@pytest.fixture
def oai(tenant, server_url):
    return openai.OpenAI(api_key=tenant.key, base_url=f"{server_url}/v1", max_retries=0, timeout=30)


def test_files_jobs_events_checkpoints_through_the_openai_client(oai, tenant, worker):
    uploaded = oai.files.create(file=("train.jsonl", io.BytesIO(CHAT_ROW * 5)), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(CHAT_ROW) * 5
    assert oai.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert oai.files.content(uploaded.id).read() == CHAT_ROW * 5

    # OpenAI's convention for a method's own knobs (DPO's beta): inside `hyperparameters`
    job = oai.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id, suffix="demo", seed=3,
        method={"type": "dora", "dora": {"hyperparameters": {"rank": 8, "alpha": 24, "max_steps": 20}}})
    assert job.status == "queued" and job.method.type == "dora" and job.seed == 3
    resolved = job.method.model_extra["dora"]["hyperparameters"]  # our additions ride along as extra fields
    assert (resolved["rank"], resolved["alpha"], resolved["max_steps"]) == (8, 24, 20)
    assert resolved["dropout"] == 0.0 and resolved["gradient_checkpointing"] == "auto"  # the lean defaults
    legacy = oai.fine_tuning.jobs.create(  # the adapter's settings beside `hyperparameters` work too
        model="tiny-llama", training_file=uploaded.id, extra_body={"method": {"type": "lora", "lora": {"rank": 4}}})
    assert legacy.method.model_extra["lora"]["hyperparameters"]["rank"] == 4
    assert job.model_extra["progress"]["step"] == 0
    supervised = oai.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert supervised.hyperparameters.n_epochs == 2

    retrieved = oai.fine_tuning.jobs.retrieve(job.id)
    assert retrieved.id == job.id and retrieved.training_file == uploaded.id

    worker.claim(job.id)
    for step in (10, 20):
        worker.call(job_store.add_checkpoint, job_id=job.id, step=step, storage_key=f"c/{step}",
                    metrics={"train_loss": 1.0 / step})
    events = list(oai.fine_tuning.jobs.list_events(job.id, limit=2))  # auto-paginates past the first page
    assert len(events) >= 5 and events[-1].message.startswith("Created fine-tuning job")
    checkpoints = oai.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [20, 10] and checkpoints[0].metrics.train_loss == 0.05

    cancelled = oai.fine_tuning.jobs.cancel(supervised.id)
    assert cancelled.status == "cancelled"


def test_list_auto_paginates_over_every_job(oai, tenant):
    file_id = tenant.file_id()
    created = [oai.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id).id for _ in range(7)]
    listed = [j.id for j in oai.fine_tuning.jobs.list(limit=3)]
    assert listed == created[::-1]
    first_page = oai.fine_tuning.jobs.list(limit=3)
    assert first_page.has_more and len(first_page.data) == 3


def test_errors_arrive_as_openai_exceptions(oai, tenant):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.fine_tuning.jobs.create(model="gpt-9", training_file=tenant.file_id())
    assert bad.value.param == "model" and "gpt-9" in bad.value.message
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-dora-wrong", base_url=oai.base_url, max_retries=0).models.list()


def test_an_oversized_upload_gets_413_not_a_broken_connection(oai):
    from tests.support.api_client import MAX_UPLOAD

    with pytest.raises(openai.APIStatusError) as too_big:
        oai.files.create(file=("big.jsonl", io.BytesIO(CHAT_ROW * (4 * MAX_UPLOAD // len(CHAT_ROW)))),
                         purpose="fine-tune")
    assert too_big.value.status_code == 413 and too_big.value.body["code"] == "file_too_large"
