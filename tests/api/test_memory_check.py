"""A job whose memory plan fits no configured worker is a 400 naming the setting to change.

The app is configured with one 24 GiB worker (DORA_WORKER_GPU_MEMORY_GIB) and two registered
local models, each a folder holding only a config.json (the API reads nothing else): Llama-3-8B's
shapes and the tiny demo Llama's. Nothing is stored for a refused job.
"""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from tests.support.api_client import make_tenant, recording_app

JOBS = "/v1/fine_tuning/jobs"
LLAMA3_8B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": False}
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}
LLAMA3_70B = LLAMA3_8B | {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                          "num_attention_heads": 64}
LLAMA2_13B = LLAMA3_8B | {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                          "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000}


def _workers_with_24_gib_gpus(settings, folder, *, max_job_gpus: int = 1):
    models = {}
    for name, config in {"llama-3-8b": LLAMA3_8B, "tiny": TINY, "llama-3-70b": LLAMA3_70B,
                         "llama-2-13b": LLAMA2_13B}.items():
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps(config))
        models[name] = str(folder / name)
    configured = settings.model_copy(update={"worker_gpu_memory_gib": [24.0], "base_models": models,
                                             "rate_limit_per_minute": 0, "max_job_gpus": max_job_gpus})
    with TestClient(recording_app(configured)) as client:
        yield make_tenant(client, configured)


@pytest.fixture
def one_24_gib_worker(settings, tmp_path):
    yield from _workers_with_24_gib_gpus(settings, tmp_path)


@pytest.fixture
def a_worker_with_four_24_gib_gpus(settings, tmp_path):
    yield from _workers_with_24_gib_gpus(settings, tmp_path, max_job_gpus=4)


def _error(response, status=400):
    assert response.status_code == status, response.text
    return response.json()["error"]


def _dora(**hyperparameters):
    return {"method": {"type": "dora", "dora": {"hyperparameters": hyperparameters}}}


def test_a_job_too_big_for_every_worker_is_a_400_naming_the_batch_size(one_24_gib_worker):
    tenant = one_24_gib_worker
    error = _error(tenant.create_job({"model": "llama-3-8b"} | _dora(batch_size=16, max_seq_len=4096)))
    assert error["param"] == "method.dora.hyperparameters.batch_size"
    assert error["code"] == "exceeds_worker_memory"
    estimate = re.search(r"needs an estimated (\d+\.\d) GiB", error["message"])
    assert estimate and float(estimate[1]) > 24 and "largest worker's 24.0 GiB" in error["message"]
    assert tenant.counts()[1] == 0  # no job row
    fits = int(re.search(r"a batch_size of at most (\d+) fits", error["message"])[1])
    assert tenant.create_job({"model": "llama-3-8b"} | _dora(batch_size=fits, max_seq_len=4096)).status_code == 200
    assert tenant.create_job({"model": "llama-3-8b"} | _dora(batch_size=fits + 1, max_seq_len=4096)).status_code == 400


def test_the_field_follows_the_request_shape_and_the_setting_that_helps(one_24_gib_worker):
    tenant = one_24_gib_worker
    supervised = {"model": "llama-3-8b", "hyperparameters": {"batch_size": 32}}
    assert _error(tenant.create_job(supervised))["param"] == "hyperparameters.batch_size"
    no_checkpointing = {"model": "llama-3-8b"} | _dora(batch_size=4, max_seq_len=2048, gradient_checkpointing=False)
    assert _error(tenant.create_job(no_checkpointing))["param"] == "method.dora.hyperparameters.gradient_checkpointing"
    quantize = _error(tenant.create_job({"model": "llama-2-13b"} | _dora(rank=8)))  # 26 GB of bf16 weights
    assert quantize["param"] == "method.dora.hyperparameters.quantization" and "nf4" in quantize["message"]
    refused = _error(tenant.create_job({"model": "llama-3-70b"} | _dora(batch_size=1, max_seq_len=512)))
    assert refused["param"] == "model" and "does not fit" in refused["message"]
    assert tenant.counts()[1] == 0


def test_a_model_too_big_for_one_gpu_is_advised_and_fits_sharded_over_several(a_worker_with_four_24_gib_gpus):
    tenant = a_worker_with_four_24_gib_gpus
    llama_13b = {"model": "llama-2-13b"}  # 26 GB of bf16 weights: no 24 GiB GPU holds them
    error = _error(tenant.create_job(llama_13b | _dora(rank=8)))
    assert error["param"] == "gpus" and "sharded over 2 GPUs" in error["message"], error
    assert tenant.create_job(llama_13b | _dora(rank=8) | {"gpus": 2}).status_code == 200  # auto: FSDP
    replicated = _error(tenant.create_job(llama_13b | _dora(rank=8, parallelism="ddp") | {"gpus": 2}))
    assert "per GPU (gpus: 2)" in replicated["message"]  # DDP: every rank holds the whole model
    assert _error(tenant.create_job(llama_13b | {"gpus": 5}))["param"] == "gpus"  # more than any worker has
    assert tenant.counts()[1] == 1


def test_jobs_that_fit_are_created(one_24_gib_worker):
    tenant = one_24_gib_worker
    assert tenant.create_job({"model": "tiny"}).status_code == 200
    # Llama-3-8B at the defaults (4 x 1024, checkpointing auto) plans about 21 GiB: it fits
    created = tenant.create_job({"model": "llama-3-8b"})
    assert created.status_code == 200, created.text
    assert tenant.counts()[1] == 2


def test_without_configured_workers_nothing_is_refused(tenant, tmp_path, settings):
    """The suite's default settings name no worker memory (CPU workers): the same big job passes."""
    assert settings.worker_gpu_memory_gib == []
    response = tenant.create_job({"model": "tiny-llama"} | _dora(batch_size=1024, max_seq_len=32768))
    assert response.status_code == 200, response.text
