"""DPO jobs through the API: the preference format at upload (line numbers), `method.dpo` resolved
and shown, and the 400s for a file, a setting or a GPU count a DPO job cannot run with."""

from __future__ import annotations

import json

import pytest

from dora_contract import DEFAULT_DPO_BETA, JobSpec, TrainingSettings
from tests.support.api_client import CHAT_ROW


def _pair(a: int) -> dict:
    return {"input": {"messages": [{"role": "user", "content": f"What is {a} plus 1?"}]},
            "preferred_output": [{"role": "assistant", "content": str(a + 1)}],
            "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}


PAIRS = "".join(json.dumps(_pair(a)) + "\n" for a in range(4)).encode()


def _dpo(hyperparameters: dict | None = None, **beside) -> dict:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters or {}} | beside}


def test_preference_upload_is_validated_with_line_numbers(tenant):
    good = tenant.upload(PAIRS)
    assert good.status_code == 200 and good.json()["format"] == "preference" and good.json()["rows"] == 4
    bad_row = {**_pair(1), "preferred_output": [{"role": "user", "content": "2"}]}
    content = PAIRS + json.dumps(bad_row).encode() + b"\n" + json.dumps({"input": {"messages": []}}).encode() + b"\n"
    refused = tenant.upload(content)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "file" and error["code"] == "invalid_file_format"
    assert "line 5: preferred_output[0].role must be 'assistant', got 'user'" in error["message"], error
    assert "line 6: field 'input.messages' must be a non-empty array" in error["message"], error
    assert "line 6: missing field 'non_preferred_output'" in error["message"], error


def test_dpo_job_shows_its_resolved_hyperparameters(tenant):
    method = _dpo({"beta": "auto", "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5, "rank": 8})
    job = tenant.job({"training_file": tenant.file_id(PAIRS), "method": method})
    shown = job["method"]
    assert shown["type"] == "dpo" and shown["dpo"]["adapter"] == "dora"
    hp = shown["dpo"]["hyperparameters"]
    assert (hp["beta"], hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"], hp["rank"]) == (
        DEFAULT_DPO_BETA, 2, TrainingSettings().micro_batch_size, 0.5, 8)
    assert "learning_rate" not in hp  # one place for it: the multiplier
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": TrainingSettings().micro_batch_size,
                                      "learning_rate_multiplier": 0.5}
    # sent back as shown, the method resolves to the same run
    again = tenant.job({"training_file": tenant.file_id(PAIRS), "method": shown, "seed": job["seed"]})
    assert again["method"] == shown
    lora = tenant.job({"training_file": tenant.file_id(PAIRS), "method": _dpo({"beta": 0.25}, adapter="lora")})
    assert lora["method"]["dpo"]["adapter"] == "lora" and lora["method"]["dpo"]["hyperparameters"]["beta"] == 0.25


def test_dpo_job_spec_carries_the_method(tenant, settings):
    from store.db import session_scope
    from store.models import Job

    job = tenant.job({"training_file": tenant.file_id(PAIRS), "method": _dpo({"beta": 0.2})})
    with session_scope(settings) as session:
        spec = JobSpec.from_data(session.get(Job, job["id"]).settings)
    assert spec.run.dpo is not None and spec.run.dpo.beta == 0.2 and spec.training_file.format == "preference"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"method": _dpo()}, "training_file", "a dpo job trains on preference rows"),
    ({"pairs": True}, "training_file", "only a dpo job trains on"),
    ({"pairs": True, "validation_file": "chat", "method": _dpo()}, "validation_file", "in chat format"),
    ({"pairs": True, "method": _dpo({"beta": 0})}, "method.dpo.hyperparameters.beta", "greater than 0"),
    ({"pairs": True, "method": _dpo({"packing": True})}, "method.dpo.hyperparameters.packing", "packing must be"),
    ({"pairs": True, "method": _dpo({"beta": 0.1, "learning_rate": 1e-4, "learning_rate_multiplier": 2})},
     "method", "not both"),
    ({"pairs": True, "method": {"type": "reinforcement", "reinforcement": {"grader": {
        "type": "string_check", "name": "x", "input": "{{sample.output_text}}", "reference": "1", "operation": "eq"}}}},
     "training_file", "only a dpo job trains on"),
])
def test_dpo_refusals_name_the_field(tenant, body, param, words):
    body = dict(body)
    body["training_file"] = tenant.file_id(PAIRS) if body.pop("pairs", False) else tenant.file_id(CHAT_ROW * 3)
    if body.get("validation_file") == "chat":
        body["validation_file"] = tenant.file_id(CHAT_ROW * 3)
    refused = tenant.create_job(body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"].startswith(param) and words in error["message"], error


@pytest.fixture
def one_24_gib_worker(settings, tmp_path):
    from tests.api.test_memory_check import _workers_with_24_gib_gpus

    yield from _workers_with_24_gib_gpus(settings, tmp_path)


def test_the_memory_check_counts_a_dpo_micro_batch_as_two_sequences_a_pair(one_24_gib_worker):
    """A DPO batch of B pairs runs 2B sequences: the largest batch_size that fits is about half SFT's."""
    import re

    tenant = one_24_gib_worker
    shape = {"max_seq_len": 4096, "batch_size": 64}

    def largest_fitting(method: dict, training_file: str) -> int:
        refused = tenant.create_job({"model": "llama-3-8b", "training_file": training_file, "method": method})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == f"method.{method['type']}.hyperparameters.batch_size", error
        return int(re.search(r"a batch_size of at most (\d+) fits", error["message"])[1])

    pairs = tenant.file_id(PAIRS)
    sft = largest_fitting({"type": "dora", "dora": {"hyperparameters": shape}}, tenant.file_id(CHAT_ROW * 3))
    dpo = largest_fitting(_dpo(shape), pairs)
    assert 2 * dpo <= sft < 2 * (dpo + 1), (sft, dpo)
    fits = tenant.create_job({"model": "llama-3-8b", "training_file": pairs,
                              "method": _dpo(shape | {"batch_size": dpo})})
    assert fits.status_code == 200, fits.text
