"""Pause and resume through the official openai client, with `run_job` in process (the tiny model):
a paused job checkpoints where it stopped, frees its worker, and, resumed, ends with the steps and
the adapter of a run that was never paused."""

from __future__ import annotations

import threading

import openai
import pytest
from safetensors.torch import load
from transformers import AutoConfig

from tests.support.jobs import dora_method
from tests.support.numerics import assert_states_close, replay_budget
from worker.job import run_job
from worker.progress import JobProgress

STEPS, PAUSE_AT = 8, 3
SEED = 4242


def _client(service) -> openai.OpenAI:
    key = service.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=service.client, max_retries=0)


def _run(service, job_id: str, published: list) -> str:
    return run_job(job_id, settings=service.settings, publish=lambda jid, gpus: published.append(jid) or True)


def _adapter(service, job_id: str) -> dict:
    url = f"/v1/fine_tuning/jobs/{job_id}/artifacts/adapter/files/adapter_model.safetensors"
    response = service.client.get(url, headers=service.headers)
    assert response.status_code == 200, response.text
    return load(response.content)


def _hold_at(monkeypatch, step: int) -> tuple[threading.Event, threading.Event]:
    """The run waits after reporting `step` until the test lets it go: the pause lands mid-run
    however fast the machine (the run itself is the real one)."""
    reached, go = threading.Event(), threading.Event()
    on_step = JobProgress.on_step

    def holding(self, metrics):
        on_step(self, metrics)
        if metrics["step"] == step:
            reached.set()
            go.wait(timeout=60)

    monkeypatch.setattr(JobProgress, "on_step", holding)
    return reached, go


def test_a_paused_job_checkpoints_frees_its_worker_and_resumed_ends_like_an_unpaused_run(service, tiny_model_dir,
                                                                                        monkeypatch):
    client = _client(service)
    method = dora_method(max_steps=STEPS, checkpoint_interval=100)
    straight = service.create(method, seed=SEED)
    assert _run(service, straight, []) == "succeeded"

    job_id = service.create(method, seed=SEED)
    published, outcome = [], {}
    reached, go = _hold_at(monkeypatch, PAUSE_AT)
    thread = threading.Thread(target=lambda: outcome.setdefault("value", _run(service, job_id, published)))
    thread.start()
    assert reached.wait(timeout=120)
    asked = client.fine_tuning.jobs.pause(job_id)
    assert asked.status == "running" and asked.model_extra["pause_requested"] is True
    with pytest.raises(openai.BadRequestError) as twice:
        client.fine_tuning.jobs.pause(job_id)
    assert twice.value.body["param"] == "fine_tuning_job_id" and "already requested" in twice.value.body["message"]
    with pytest.raises(openai.BadRequestError) as early:
        client.fine_tuning.jobs.resume(job_id)
    assert early.value.body["param"] == "fine_tuning_job_id"
    go.set()
    thread.join(timeout=120)
    assert outcome["value"] == "paused" and published == []  # nothing queued: the job waits for a resume

    paused = client.fine_tuning.jobs.retrieve(job_id)
    row = service.row(job_id)
    stopped_at = row.step
    assert paused.status == "paused" and paused.model_extra["pause_requested"] is False
    assert row.lease_owner is None and PAUSE_AT <= stopped_at < STEPS
    assert row.max_attempts == 4  # 3 by default, and the pause cost no attempt
    assert [c.step for c in service.checkpoints(job_id)] == [stopped_at]  # written for the pause
    assert (f"The job was paused at step {stopped_at}; a resume continues from its checkpoint at step {stopped_at}"
            in service.events(job_id))
    with pytest.raises(openai.BadRequestError) as again:
        client.fine_tuning.jobs.pause(job_id)
    assert again.value.body["param"] == "fine_tuning_job_id" and "already paused" in again.value.body["message"]
    assert _run(service, job_id, published) == "skipped"  # a stale message does not run a paused job

    service.published.clear()
    resumed = client.fine_tuning.jobs.resume(job_id)
    assert resumed.status == "queued" and service.published == [job_id]
    assert _run(service, job_id, published) == "succeeded"
    done = client.fine_tuning.jobs.retrieve(job_id)
    assert done.status == "succeeded" and done.model_extra["attempt"] == 2
    assert done.model_extra["resumed_from_step"] == stopped_at
    assert service.steps(job_id) == service.steps(straight) == list(range(1, STEPS + 1))
    assert f"Attempt 2 resumed from the checkpoint at step {stopped_at}" in service.events(job_id)
    with pytest.raises(openai.BadRequestError) as ended:
        client.fine_tuning.jobs.pause(job_id)
    assert ended.value.body["param"] == "fine_tuning_job_id" and "succeeded" in ended.value.body["message"]
    assert_states_close(_adapter(service, job_id), _adapter(service, straight),
                        replay_budget(AutoConfig.from_pretrained(tiny_model_dir)), what="paused and resumed adapter")


def test_a_queued_job_pauses_at_once_is_not_counted_as_active_and_resumes_under_the_cap(service, monkeypatch):
    client = _client(service)
    job_id = service.create(dora_method())
    paused = client.fine_tuning.jobs.pause(job_id)
    assert paused.status == "paused"
    with pytest.raises(openai.BadRequestError) as twice:
        client.fine_tuning.jobs.pause(job_id)
    assert twice.value.body["param"] == "fine_tuning_job_id"
    # a cap of one: the paused job leaves room for another, whose presence refuses the resume
    monkeypatch.setattr(service.client.app.state.settings, "max_active_jobs_per_tenant", 1)
    other = service.create(dora_method())
    with pytest.raises(openai.RateLimitError):
        client.fine_tuning.jobs.resume(job_id)
    assert client.fine_tuning.jobs.retrieve(job_id).status == "paused"  # nothing changed
    client.fine_tuning.jobs.cancel(other)
    assert client.fine_tuning.jobs.resume(job_id).status == "queued"
    assert client.fine_tuning.jobs.pause(job_id).status == "paused"
    assert client.fine_tuning.jobs.cancel(job_id).status == "cancelled"  # a paused job may be cancelled
    with pytest.raises(openai.BadRequestError) as finished:
        client.fine_tuning.jobs.resume(job_id)
    assert finished.value.body["param"] == "fine_tuning_job_id" and "cancelled" in finished.value.body["message"]
