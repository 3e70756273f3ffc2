"""Reinforcement jobs through the API: the prompts format at upload, `method.reinforcement` resolved and
shown, its rows checked against the grader at creation, a model grader's judge resolved for the caller's tenant,
and the 400s naming what a job cannot run with."""

from __future__ import annotations

import json

import pytest

from dora_contract import DEFAULT_GRPO_BETA, JobSpec, TrainingSettings
from tests.support.api_client import CHAT_ROW

PROMPTS = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus 1?"}],
                              "answer": str(a + 1)}) + "\n" for a in range(4)).encode()
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "eq"}

# a judge of the caller's tenant's models: the base here; an ft: model of another organization is not found
JUDGED = {"type": "score_model", "name": "judge", "model": "tiny-llama", "range": [0, 10],
          "input": [{"role": "user", "content": "Rate 0 to 10: {{sample.output_text}}"}]}
FOREIGN = "ft:tiny-llama:another-org:judge:abcd1234"


def _rft(hyperparameters: dict | None = None, grader: dict | None = None, **beside) -> dict:
    return {"type": "reinforcement", "reinforcement": {"grader": grader or EXACT,
                                                       "hyperparameters": hyperparameters or {}} | beside}


def test_prompts_upload_is_its_own_format(tenant):
    good = tenant.upload(PROMPTS)
    assert good.status_code == 200 and good.json()["format"] == "prompts" and good.json()["rows"] == 4


def test_reinforcement_job_shows_its_resolved_hyperparameters_and_spec(tenant, settings):
    from store.db import session_scope
    from store.models import Job

    method = _rft({"compute_multiplier": 8.0, "eval_interval": 5, "eval_samples": "auto", "n_epochs": 2,
                   "reasoning_effort": "default", "rank": 8})
    job = tenant.job({"training_file": tenant.file_id(PROMPTS), "method": method})
    shown = job["method"]["reinforcement"]
    assert job["method"]["type"] == "reinforcement" and shown["adapter"] == "dora" and shown["grader"] == EXACT
    hp = shown["hyperparameters"]
    assert (hp["compute_multiplier"], hp["eval_interval"], hp["eval_samples"], hp["n_epochs"], hp["rank"],
            hp["beta"], hp["reasoning_effort"], hp["batch_size"]) == (
        8, 5, 8, 2, 8, DEFAULT_GRPO_BETA, "default", TrainingSettings().micro_batch_size)
    again = tenant.job({"training_file": tenant.file_id(PROMPTS), "method": job["method"], "seed": job["seed"]})
    assert again["method"] == job["method"]  # sent back as shown: the same run
    with session_scope(settings) as session:
        spec = JobSpec.from_data(session.get(Job, job["id"]).settings)
    assert spec.run.reinforcement.samples_per_prompt == 8 and spec.training_file.format == "prompts"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"method": _rft(grader={**EXACT, "reference": "{{item.solution}}"})}, "training_file",
     "line 1"),
    ({"chat": True, "method": _rft()}, "training_file", "a reinforcement job trains on prompts rows"),
    ({}, "training_file", "only a reinforcement job trains on"),
    ({"method": _rft({"compute_multiplier": 2.5})}, "method.reinforcement.hyperparameters.compute_multiplier",
     "whole number"),
    ({"method": _rft({"reasoning_effort": "high"})}, "method.reinforcement.hyperparameters.reasoning_effort",
     "only 'default'"),
    ({"method": _rft(grader=JUDGED | {"model": "no-such-model"})}, "method.reinforcement.grader.model",
     "'no-such-model' does not exist"),
    ({"method": _rft(grader={"type": "multi", "name": "both", "calculate_output": "exact + judge",
                             "graders": {"exact": EXACT, "judge": JUDGED | {"model": FOREIGN}}})},
     "method.reinforcement.grader.graders.judge.model", "does not exist"),
    ({"method": _rft(grader={"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0"})},
     "method.reinforcement.grader.type", "disabled"),
    ({"method": _rft({"packing": True})}, "method.reinforcement.hyperparameters.packing", "packing must be"),
    ({"gpus": 2, "method": _rft()}, "gpus", ""),
])
def test_reinforcement_refusals_name_the_field(tenant, body, param, words):
    body = dict(body)
    body["training_file"] = tenant.file_id(CHAT_ROW * 3) if body.pop("chat", False) else tenant.file_id(PROMPTS)
    refused = tenant.create_job(body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == param and words in error["message"], error
    if param.endswith(".model"):  # a judge: the completions' code, as an eval run's unknown data_source.model
        assert error["code"] == "model_not_found", error


def test_a_reinforcement_job_may_train_on_an_nf4_base(tenant, settings):
    """Sampling runs through the serving engine on the training model's own (NF4AdapterLinear) layers."""
    from store.db import session_scope
    from store.models import Job

    job = tenant.job({"training_file": tenant.file_id(PROMPTS), "method": _rft({"quantization": "nf4"})})
    with session_scope(settings) as session:
        spec = JobSpec.from_data(session.get(Job, job["id"]).settings)
    assert spec.run.training.quantization == "nf4" and spec.run.reinforcement is not None


def test_score_model_and_label_model_graders_are_taken_with_a_judge_the_tenant_may_call(tenant, settings):
    from store.db import session_scope
    from store.models import Job

    label = {"type": "label_model", "name": "verdict", "model": "tiny-llama", "labels": ["right", "wrong"],
             "passing_labels": ["right"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    for grader in (JUDGED, {"type": "multi", "name": "both", "calculate_output": "judge / 10 + verdict",
                            "graders": {"judge": JUDGED, "verdict": label}}):
        job = tenant.job({"training_file": tenant.file_id(PROMPTS), "method": _rft(grader=grader)})
        assert job["method"]["reinforcement"]["grader"] == grader
        with session_scope(settings) as session:
            spec = JobSpec.from_data(session.get(Job, job["id"]).settings)
        assert spec.run.reinforcement.grader.model_dump(mode="json", exclude_none=True) == grader


def test_a_python_grader_is_taken_where_the_operator_enabled_it(tenant, settings, monkeypatch):
    monkeypatch.setattr(settings, "python_grader_enabled", True)
    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0"}
    job = tenant.job({"training_file": tenant.file_id(PROMPTS), "method": _rft(grader=grader)})
    assert job["method"]["reinforcement"]["grader"]["type"] == "python"
