"""Continued training through the official openai client, with `run_job` in process (the tiny model):
SFT then DPO from the fine-tuned model, SFT from a checkpoint, and the 400s naming `model` or the
adapter setting that differs."""

from __future__ import annotations

import json
import math
import uuid

import openai
import pytest
import torch
from sqlalchemy import func, select
from transformers import AutoConfig

from dora_contract import JobSpec
from store.db import session_scope
from store.models import Job, MetricPoint
from tests.support.jobs import dora_method
from tests.support.numerics import assert_distinguishable, replay_budget
from worker.job import run_job

TRAINING = {"max_steps": 4, "batch_size": 4, "max_seq_len": 64, "checkpoint_interval": 2, "learning_rate": 1e-2,
            "warmup_ratio": 0.0, "lr_scheduler": "constant"}
PAIRS = "".join(json.dumps({"input": {"messages": [{"role": "user", "content": f"What is {a} plus 1?"}]},
                            "preferred_output": [{"role": "assistant", "content": str(a + 1)}],
                            "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}) + "\n"
                for a in range(8)).encode()


def _client(service, key: str | None = None) -> openai.OpenAI:
    key = key or service.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=service.client, max_retries=0)


def _dpo(rank: int = 4) -> dict:
    return {"type": "dpo", "dpo": {"hyperparameters": TRAINING | {"rank": rank, "beta": 0.1}}}


def _succeeds(service, job_id: str) -> dict:
    assert run_job(job_id, settings=service.settings, publish=lambda *_: True) == "succeeded"
    return service.get(job_id)


def _loss(service, job_id: str, step: int) -> float:
    with session_scope(service.settings) as session:
        return session.scalar(select(MetricPoint.values).where(MetricPoint.job_id == job_id,
                                                               MetricPoint.step == step))["loss"]


def _jobs(service) -> int:
    with session_scope(service.settings) as session:
        return session.scalar(select(func.count()).select_from(Job))


@pytest.fixture
def sft(service) -> dict:
    return _succeeds(service, service.create(dora_method(**TRAINING), seed=7))


def test_dpo_continues_the_fine_tuned_model_of_an_sft_job(service, sft, tiny_model_dir):
    client = _client(service)
    pairs = service.upload(PAIRS)
    job = client.fine_tuning.jobs.create(model=sft["fine_tuned_model"], training_file=pairs, method=_dpo(), seed=3)
    assert job.model == "tiny-llama"  # the base: the result's ft: name shows it
    spec = JobSpec.from_data(service.row(job.id).settings)
    assert spec.parent.model == sft["fine_tuned_model"] and spec.parent.job_id == sft["id"]
    assert spec.parent.step is None and spec.run.dpo is not None
    done = _succeeds(service, job.id)
    assert done["fine_tuned_model"].startswith("ft:tiny-llama:") and done["fine_tuned_model"] != sft["fine_tuned_model"]
    assert f"Starting from the adapter of {sft['fine_tuned_model']}" in service.events(job.id)
    # its reference is the SFT model it starts from, so step 1 (before any update) has policy = reference:
    # loss log 2, as a fresh adapter's over the base has; the two start apart, so step 2 differs
    fresh = client.fine_tuning.jobs.create(model="tiny-llama", training_file=pairs, method=_dpo(), seed=3)
    _succeeds(service, fresh.id)
    assert _loss(service, job.id, 1) == pytest.approx(math.log(2), rel=1e-6) == _loss(service, fresh.id, 1)
    assert_distinguishable(torch.tensor([_loss(service, job.id, 2)]), torch.tensor([_loss(service, fresh.id, 2)]),
                           replay_budget(AutoConfig.from_pretrained(tiny_model_dir)), what="step 2's DPO loss")


def test_a_job_continues_from_a_checkpoint(service, sft):
    client = _client(service)
    checkpoint = f"{sft['fine_tuned_model']}:ckpt-step-2"
    assert checkpoint in [c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(sft["id"])]
    job = client.fine_tuning.jobs.create(model=checkpoint, training_file=service.upload(),
                                         method=dora_method(**TRAINING | {"max_steps": 2}))
    parent = JobSpec.from_data(service.row(job.id).settings).parent
    assert job.model == "tiny-llama" and (parent.model, parent.step) == (checkpoint, 2)
    assert _succeeds(service, job.id)["fine_tuned_model"].startswith("ft:tiny-llama:")
    assert f"Starting from the adapter of {checkpoint}" in service.events(job.id)


def test_refusals_name_the_field_and_create_nothing(service, sft):
    from store.tenants import create_api_key

    client = _client(service)
    before = _jobs(service)
    cases = [
        (dict(model=sft["fine_tuned_model"], method=_dpo(rank=8)), "method.dpo.hyperparameters.rank", "rank 8"),
        (dict(model=sft["fine_tuned_model"], method={"type": "lora", "lora": {"rank": 4, "alpha": 8}}), "method.type",
         "method 'lora'"),
        (dict(model=sft["fine_tuned_model"] + ":ckpt-step-x", method=dora_method()), "model", "checkpoint step"),
        (dict(model=sft["fine_tuned_model"] + ":ckpt-step-3", method=dora_method()), "model", "does not exist"),
    ]
    training = {"method.dpo.hyperparameters.rank": service.upload(PAIRS)}
    for body, param, words in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(training_file=training.get(param) or service.upload(), **body)
        assert refused.value.body["param"] == param and words in refused.value.body["message"], refused.value.body
    with session_scope(service.settings) as session:  # another tenant's model is no model of this one
        other = _client(service, create_api_key(session, tenant_name=f"other-{uuid.uuid4().hex[:8]}").key)
    with pytest.raises(openai.BadRequestError) as foreign:
        other.fine_tuning.jobs.create(model=sft["fine_tuned_model"], training_file=other.files.create(
            file=("train.jsonl", b'{"messages": [{"role": "user", "content": "hi"}, '
                                 b'{"role": "assistant", "content": "hello"}]}\n'), purpose="fine-tune").id,
            method=dora_method(**TRAINING))
    assert foreign.value.body["param"] == "model" and foreign.value.body["code"] == "model_not_found"
    assert _jobs(service) == before
