"""One run contract from request to layer: a default job is the default `dora train` run, on the lean path.

The API resolves a job with the run contract's defaults (dora_contract); the worker hands the
stored dump to dora_core; `dora train` reads the same contract from YAML. These tests take each
path with nothing but the two required values and compare what would run.
"""

from __future__ import annotations

import pytest

from dora_contract import JobSpec
from dora_core import AdapterLinear, apply_adapter
from dora_core.training import RunConfig
from store.db import session_scope
from store.models import Job
from tests.support.model_factories import input_ids, perturb_adapters, tiny_llama

PATHS = {"base_model", "train_file", "validation_file"}


def _stored_spec(settings, job_id: str) -> JobSpec:
    with session_scope(settings) as session:
        return JobSpec.from_data(session.get(Job, job_id).settings)


def _worker_config(stored: JobSpec, train_file: str) -> RunConfig:
    """What worker/job.py builds: the stored run plus the local paths it downloaded."""
    return RunConfig.from_dict(stored.run.model_dump() | {"base_model": stored.base_model.source,
                                                          "train_file": train_file})


def test_a_default_job_resolves_to_the_default_dora_train_run(tenant, settings, tmp_path):
    job = tenant.job()  # nothing but model and training_file
    (tmp_path / "run.yaml").write_text("base_model: model\ntrain_file: train.jsonl\n")
    cli = RunConfig.from_file(tmp_path / "run.yaml")  # what `dora train run.yaml` runs
    worker = _worker_config(_stored_spec(settings, job["id"]), train_file=cli.train_file)

    # The seed is the one value that differs, on purpose: like OpenAI, a job without a seed
    # gets a random one (shown on the job); `dora train` defaults to 0 so a rerun resumes.
    assert worker.training.seed == job["seed"]
    not_compared = dict.fromkeys(PATHS, True) | {"training": {"seed"}}
    assert worker.model_dump(exclude=not_compared) == cli.model_dump(exclude=not_compared)
    # and the job shows every resolved value, the same values under the API's names
    shown = job["method"]["dora"]["hyperparameters"]
    assert shown["n_epochs"] == cli.training.epochs and shown["batch_size"] == cli.training.micro_batch_size
    assert {k: shown[k] for k in ("rank", "alpha", "dropout", "use_rslora")} == cli.adapter.model_dump(
        include={"rank", "alpha", "dropout", "use_rslora"})
    assert shown["gradient_checkpointing"] == "auto" and shown["dropout"] == 0.0
    assert job["outputs"] == list(cli.outputs)


@pytest.mark.parametrize("body", [{}, {"method": {"type": "dora", "dora": {"hyperparameters": {"rank": 4}}}}])
def test_a_default_job_trains_every_layer_through_the_lean_autograd_function(tenant, settings, body):
    """The stored run, applied as the worker applies it, runs DoraLinearFunction in every adapted layer."""
    config = _worker_config(_stored_spec(settings, tenant.job(body)["id"]), train_file="/data/train.jsonl")
    model = apply_adapter(tiny_llama(), config.adapter).train()
    perturb_adapters(model)
    nodes = []

    def record(module, inputs, output):
        nodes.append(type(output.grad_fn).__name__)

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, AdapterLinear)]
    loss = model(input_ids=input_ids(), labels=input_ids()).loss
    for handle in handles:
        handle.remove()
    loss.backward()
    assert len(nodes) == len([m for m in model.modules() if isinstance(m, AdapterLinear)]) > 0
    assert set(nodes) == {"DoraLinearFunctionBackward"}, "no plain-autograd fallback on the default path"
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
