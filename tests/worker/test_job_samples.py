"""Samples through the worker (issue #15): a job with a validation file stores the model's greedy
answers at each evaluation (and the base model's at step 0), listed at GET .../samples;
`sample_prompts: 0` stores none."""

from __future__ import annotations

import json

from tests.support.jobs import ROWS, dora_method
from worker.job import run_job


def _samples(service, job_id, **params) -> list[dict]:
    response = service.client.get(f"/v1/fine_tuning/jobs/{job_id}/samples", headers=service.headers,
                                  params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _run(service, job_id) -> str:
    return run_job(job_id, settings=service.settings, publish=lambda jid, gpus: True)


def test_a_job_with_a_validation_file_stores_samples_at_each_evaluation(service):
    validation = service.upload("".join(json.dumps(row) + "\n" for row in ROWS[:5]).encode())
    job_id = service.create(dora_method(eval_interval=3, sample_prompts=2, sample_max_new_tokens=4),
                            validation_file=validation)
    job = service.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=service.headers).json()
    assert job["method"]["dora"]["hyperparameters"]["sample_prompts"] == 2
    assert _run(service, job_id) == "succeeded"
    samples = _samples(service, job_id)
    assert [(s["step"], s["index"]) for s in samples] == [(6, 0), (6, 1), (3, 0), (3, 1), (0, 0), (0, 1)]
    assert [s["expected"] for s in samples[:2]] == [ROWS[0]["messages"][1]["content"],
                                                    ROWS[1]["messages"][1]["content"]]
    assert all(ROWS[s["index"]]["messages"][0]["content"] in s["prompt"] for s in samples)
    assert all(s["prompt"].endswith("<|assistant|>\n") and isinstance(s["answer"], str) for s in samples)
    assert [s["index"] for s in _samples(service, job_id, step=3)] == [0, 1]


def test_sample_prompts_zero_stores_no_samples(service):
    job_id = service.create(dora_method(eval_interval=3, sample_prompts=0), validation_file=service.upload())
    assert _run(service, job_id) == "succeeded"
    assert _samples(service, job_id) == []
