"""The embedded defaults of `make run`: SQLite, kombu's SQLAlchemy transport on SQLite, a local folder."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import pytest

from dora_contract import DEFAULT_DPO_BETA, DEFAULT_GRPO_BETA, DPO_METRICS, RFT_METRICS
from tests.support import e2e_scenarios as scenarios
from tests.support.jobs import dora_method, wait_for
from tests.support.stack import E2E_RUN, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("embedded")
    with running_stack(root, database_url=f"sqlite:///{root / 'dora.db'}",
                       broker_url=f"sqla+sqlite:///{root / 'broker.db'}", tiny_model_dir=tiny_model_dir) as stack:
        yield stack


def test_a_job_trains_and_its_adapter_and_merged_model_download_and_agree(stack, tiny_model_dir, tmp_path):
    job = scenarios.timed_job(stack, "embedded (SQLite + SQLAlchemy broker)")
    assert job["status"] == "succeeded" and job["attempt"] == 1, job
    archives = {a["name"]: a["download_url"] for a in stack.api.artifacts(job["id"])}
    adapter = scenarios.extract(stack.api.download(archives["adapter"]), tmp_path) / "adapter"
    merged = scenarios.extract(stack.api.download(archives["merged"]), tmp_path) / "merged"
    scenarios.same_logits_from_adapter_and_merged(adapter, merged, tiny_model_dir)


def test_the_same_message_delivered_twice_runs_the_job_once(stack):
    job = stack.api.create(dora_method(max_steps=4, checkpoint_interval=4))
    assert stack.publish(job["id"])  # a second message for the same job
    job = stack.api.wait(job["id"])
    assert job["status"] == "succeeded" and job["attempt"] == 1
    worker = stack.workers[-1]
    # dropped by the parent's claim check before any fork (worker/pool.py), or, when it arrived before
    # the first attempt's claim, by the claim in its own job process
    dropped = (f"job {job['id']}: not claimable", f"job {job['id']}: not claimed")
    wait_for(lambda: any(line in worker.text() for line in dropped), timeout=30, what="the duplicate to be dropped")
    assert sum(m.startswith("Attempt ") for m in stack.api.events(job["id"])) == 1
    assert stack.api.job(job["id"])["attempt"] == 1


def test_cancel_mid_run_stops_within_a_step_without_retry_or_artifacts(stack):
    api = stack.api
    job = api.create(dora_method(max_steps=2000, checkpoint_interval=50))
    pid = api.job_pid(job["id"], 1)
    wait_for(lambda: len(api.steps(job["id"])) >= 3, timeout=60, what="three steps")
    at_request = api.cancel(job["id"])["progress"]["step"]
    job = api.wait(job["id"], timeout=30)
    assert job["status"] == "cancelled" and job["result_files"] == [] and api.artifacts(job["id"]) == []
    assert max(api.steps(job["id"])) <= at_request + 1
    wait_for(lambda: not _alive(pid), timeout=20, what="the job's process to exit (its memory freed)")
    time.sleep(3)  # several reconciler passes: nothing re-runs a cancelled job
    job = api.job(job["id"])
    assert job["status"] == "cancelled" and job["attempt"] == 1


def test_a_dataset_that_breaks_at_training_time_fails_with_a_clear_error(stack):
    job = stack.api.wait(stack.api.create(dora_method(**E2E_RUN, max_seq_len=8))["id"])
    assert job["status"] == "failed" and job["attempt"] == 1
    assert job["error"]["code"] == "invalid_training_file"
    assert "line 1: no trainable tokens within max_seq_len=8" in job["error"]["message"]


def test_a_worker_killed_after_a_checkpoint_is_replaced_and_the_job_resumes_there(stack):
    scenarios.crash_after_first_checkpoint_and_resume(stack, new_work_dir=None)  # same host: local checkpoints


def test_a_job_that_kills_its_worker_every_time_stops_at_the_attempt_cap(stack):
    api = stack.api
    job = api.create(dora_method(max_steps=2000, checkpoint_interval=50), max_attempts=2)
    for attempt in (1, 2):
        os.kill(api.job_pid(job["id"], attempt), 9)  # the job's process dies (say, a segfault in a kernel)
    job = api.wait(job["id"], timeout=60)
    assert job["status"] == "failed" and job["attempt"] == 2
    assert job["error"] == {"code": "attempts_exhausted", "param": None,
                            "message": "the job did not finish after 2 attempts (worker lost)"}
    assert stack.workers[-1].alive()  # the worker itself lives on


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_worker_stopped_gracefully_checkpoints_and_the_next_worker_resumes_where_it_stopped(stack, signum):
    """What Ctrl-C on `dora worker` (SIGINT), `make run`/`dora up` (which SIGTERMs its worker) or
    `docker stop` (SIGTERM) does: the job stops at its next micro-batch, writes a checkpoint at the
    step it reached, goes back to the queue, and the next attempt resumes from that very step (not
    from the last interval checkpoint, here none: the interval is longer than the run)."""
    api = stack.api
    job = api.create(dora_method(max_steps=60, checkpoint_interval=1000), outputs=["adapter"])
    wait_for(lambda: len(api.steps(job["id"])) >= 3, timeout=90, what="three steps", interval=0.05)
    worker = stack.workers[-1]
    started = time.monotonic()
    worker.popen.send_signal(signum)
    worker.popen.wait(timeout=30)
    assert worker.popen.returncode == 0 and time.monotonic() - started < 15, worker.text()[-3000:]
    job = api.job(job["id"])
    stopped_at = job["progress"]["step"]
    assert job["status"] == "queued" and job["attempt"] == 1 and 3 <= stopped_at < 60
    assert api.checkpoints(job["id"]) == [stopped_at]  # written at the stop, not at an interval
    assert max(api.steps(job["id"])) == stopped_at
    assert "The worker is shutting down; the job will resume from its newest checkpoint" in api.events(job["id"])
    stack.start_worker()
    job = api.wait(job["id"], timeout=90)
    assert job["status"] == "succeeded" and job["attempt"] == 2 and job["resumed_from_step"] == stopped_at
    assert f"Attempt 2 resumed from the checkpoint at step {stopped_at}" in api.events(job["id"])
    assert api.steps(job["id"]) == list(range(1, 61))


# a DPO job created by the official `openai` client: it shows its resolved hyperparameters, and its
# per-step reward metrics land in the job's metric points, as the dashboard reads them
PAIRS = "".join(json.dumps({
    "input": {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}]},
    "preferred_output": [{"role": "assistant", "content": str(a + b)}],
    "non_preferred_output": [{"role": "assistant", "content": "I would rather not say."}],
}) + "\n" for a in range(3) for b in range(3)).encode()


def test_a_dpo_job_through_the_openai_client_succeeds(stack):
    import openai

    oai = openai.OpenAI(api_key=stack.api.key, base_url=f"{stack.api.url}/v1", max_retries=0, timeout=30)
    training_file = oai.files.create(file=("pairs.jsonl", io.BytesIO(PAIRS)), purpose="fine-tune")
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "batch_size": 3, "n_epochs": "auto",
                                                         "learning_rate_multiplier": 20}}}
    job = oai.fine_tuning.jobs.create(model="tiny-llama", training_file=training_file.id, method=method,
                                      extra_body={"outputs": ["adapter"]})
    hp = job.method.dpo.hyperparameters  # the client's own DpoHyperparameters type, resolved
    assert (hp.beta, hp.batch_size, hp.n_epochs, hp.learning_rate_multiplier) == (DEFAULT_DPO_BETA, 3, 1.0, 20)
    started = time.monotonic()
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() - started < 90, job
        time.sleep(0.1)
        job = oai.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.hyperparameters.batch_size == 3
    points = stack.api.client.get(f"/v1/fine_tuning/jobs/{job.id}/metrics", params={"limit": 100}).json()["data"]
    steps = [point for point in points if "loss" in point["values"]]
    assert [point["step"] for point in steps] == [1, 2, 3]  # 9 pairs, 3 a step, one epoch
    assert all(set(DPO_METRICS) <= set(point["values"]) for point in steps), steps
    assert steps[0]["values"]["loss"] == pytest.approx(0.6931471805599453, rel=1e-4)  # policy = reference at step 1
    assert steps[-1]["values"]["rewards/margins"] > 0  # the preferred answers gained on the others
    assert job.result_files


# reinforcement: prompts rows with the field the grader reads; exact match of the answer
PROMPTS = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                              "answer": str(a + b)}) + "\n" for a in range(3) for b in range(2)).encode()
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "eq"}


def test_a_reinforcement_job_through_the_openai_client_succeeds(stack):
    """A string_check grader rewards each sampled answer; the job shows its hyperparameters resolved
    (the client's ReinforcementHyperparameters), its steps carry the reward metrics, its samples a reward."""
    import openai

    oai = openai.OpenAI(api_key=stack.api.key, base_url=f"{stack.api.url}/v1", max_retries=0, timeout=30)
    training_file = oai.files.create(file=("prompts.jsonl", io.BytesIO(PROMPTS)), purpose="fine-tune")
    method = {"type": "reinforcement", "reinforcement": {"grader": EXACT, "hyperparameters": {
        "batch_size": 2, "n_epochs": "auto", "compute_multiplier": 2, "eval_interval": 3, "eval_samples": 2,
        "reasoning_effort": "default", "learning_rate_multiplier": "auto", "max_completion_tokens": 4}}}
    job = oai.fine_tuning.jobs.create(model="tiny-llama", training_file=training_file.id,
                                      validation_file=training_file.id, method=method,
                                      extra_body={"outputs": ["adapter"]})
    hp = job.method.reinforcement.hyperparameters  # the client's own type, resolved
    assert (hp.batch_size, hp.n_epochs, hp.compute_multiplier, hp.eval_interval, hp.eval_samples,
            hp.reasoning_effort, hp.learning_rate_multiplier) == (2, 1, 2, 3, 2, "default", 1.0)
    assert job.method.reinforcement.grader.type == "string_check"
    started = time.monotonic()
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() - started < 120, job
        time.sleep(0.1)
        job = oai.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    raw = stack.api.client.get(f"/v1/fine_tuning/jobs/{job.id}").json()["method"]["reinforcement"]
    assert raw["hyperparameters"]["beta"] == DEFAULT_GRPO_BETA and raw["adapter"] == "dora"
    points = stack.api.client.get(f"/v1/fine_tuning/jobs/{job.id}/metrics", params={"limit": 100}).json()["data"]
    steps = [point for point in points if "loss" in point["values"]]
    assert [point["step"] for point in steps] == [1, 2, 3]  # 6 prompts, 2 a step, one epoch
    assert all(set(RFT_METRICS) <= set(point["values"]) for point in steps), steps
    assert all(0.0 <= point["values"]["reward"] <= 1.0 for point in steps)
    evaluations = [point for point in points if "eval_reward" in point["values"]]
    assert [point["step"] for point in evaluations] == [0, 3]  # before training and at eval_interval
    samples = stack.api.client.get(f"/v1/fine_tuning/jobs/{job.id}/samples", params={"limit": 100}).json()["data"]
    assert samples and all(sample["expected"].startswith("reward ") for sample in samples), samples
