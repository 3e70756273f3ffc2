"""The production shape: PostgreSQL, Redis as the broker; clients are the official `openai` one."""

from __future__ import annotations

import io
import os

import pytest

from tests.support import e2e_scenarios as scenarios
from tests.support.jobs import DATASET, dora_method
from tests.support.services import postgres_database, unavailable
from tests.support.stack import E2E_RUN, TIMINGS, running_stack

# a database of its own: the API suite uses 15, benchmarks/api_load.py 14
REDIS_URL = os.environ.get("DORA_TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as error:
        unavailable("Redis", error, problem="is not available")
    client.delete("gpu", "unacked", "unacked_index")  # leftovers of an earlier run
    root = tmp_path_factory.mktemp("redis-postgres")
    with postgres_database() as database_url:
        with running_stack(root, database_url=database_url, broker_url=REDIS_URL,
                           tiny_model_dir=tiny_model_dir) as stack:
            yield stack


def test_a_job_through_the_openai_client_trains_and_its_outputs_agree(stack, tiny_model_dir, tmp_path):
    import time

    import openai

    oai = openai.OpenAI(api_key=stack.api.key, base_url=f"{stack.api.url}/v1", max_retries=0, timeout=30)
    training_file = oai.files.create(file=("train.jsonl", io.BytesIO(DATASET)), purpose="fine-tune")
    submitted = time.monotonic()
    job = oai.fine_tuning.jobs.create(model="tiny-llama", training_file=training_file.id,
                                      extra_body={"method": dora_method(**E2E_RUN), "outputs": ["adapter", "merged"]})
    first_step = None
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() - submitted < 90, job
        time.sleep(0.05)
        job = oai.fine_tuning.jobs.retrieve(job.id)
        if first_step is None and job.model_extra["progress"]["step"] > 0:
            first_step = time.monotonic() - submitted
    TIMINGS["Redis + PostgreSQL (openai client)"] = {
        "submit_to_first_step": round(first_step or 0, 2),
        "submit_to_succeeded": round(time.monotonic() - submitted, 2),
        "steps": job.model_extra["progress"]["total_steps"]}
    assert job.status == "succeeded" and job.fine_tuned_model.startswith("ft:tiny-llama:")
    assert any(e.message == "The job has successfully completed" for e in oai.fine_tuning.jobs.list_events(job.id))
    outputs = {}
    for file_id in job.result_files:  # each output is a `fine-tune-results` file: a tar of its folder
        name = oai.files.retrieve(file_id).filename.rsplit("-", 1)[1].removesuffix(".tar")
        outputs[name] = scenarios.extract(oai.files.content(file_id).read(), tmp_path) / name
    assert set(outputs) == {"adapter", "merged"}
    scenarios.same_logits_from_adapter_and_merged(outputs["adapter"], outputs["merged"], tiny_model_dir)


def test_a_worker_killed_after_a_checkpoint_is_replaced_on_another_host(stack, tmp_path):
    job = scenarios.crash_after_first_checkpoint_and_resume(stack, new_work_dir=str(tmp_path / "other-host"))
    assert any(m.startswith(f"Fetched the checkpoint at step {job['resumed_from_step']}")
               for m in stack.api.events(job["id"]))
