"""Jobs with `gpus: N`: the API's bound, the queue per GPU count, and a 2-GPU job through `run_job`.

On this CPU-only host a worker told it has 2 GPUs (`gpus=2`, DORA_GPUS) runs a 2-GPU job as two
gloo processes of one torch.distributed run, children of the job's process (worker/ranks.py).
What a job owes its user is the same as on one GPU: the 2-GPU job ran as two ranks of one group
(each rank records itself: tests/support/rank_records.py) and gives the 1-GPU job's run (same
seed, data and global batch), its metrics, events and checkpoints reach SQL and storage from
rank 0, a cancel ends every rank within a step, and a failing rank's error is classified as in
one process (a bad dataset fails at once, no retry). A shutdown and a SIGKILL through the real
worker are in tests/e2e/test_multi_gpu_job.py.

Tolerance. Only the order of the gradient sums changes (each rank's micro-batch, then the
all-reduce, instead of one running sum), so the jobs are compared where that order cannot move
the verdict on any machine: every step once, each step's trained tokens (exact), and step 1's
loss and gradient norm, computed before any update, within their fp32 rounding budgets
(tests/support/numerics.replay_budget, gradient_budget). Later steps and the adapters are not
compared in fp32: AdamW divides each component by its own history, so a gradient component near
Adam's eps whose last bit the other order changes moves its parameter by ~0.02 lr whatever the
tensor's scale (numerics.adam_drift: no fp32 budget exists), and whether that happens depends on
the CPU, its BLAS path and the thread count. The multi-step equality of the same training path
(torch's elastic launcher, process_group, run_training over DDP, which `auto` picks on the CPU)
is tests/core/test_distributed.py's, in float64 within the rounding budget plus Adam's
worst-case drift. Here the outputs are checked as the service keeps them: the adapter loads,
has the 1-GPU job's tensors (names, shapes, dtypes) and adapter_config.json, and is rank 0's
step-6 checkpoint bit for bit. A 2-GPU job launched as one rank (the same numbers: one process
runs both micro-batches) fails the rank records; a gradient averaged instead of summed over the
ranks halves the step-1 grad_norm; a loss not summed over the ranks halves the step-1 loss.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select

from store.db import session_scope
from store.models import Artifact, MetricPoint
from tests.support.api_client import recording_app
from tests.support.distributed_runs import descendant_pids, wait_until_gone
from tests.support.jobs import dora_method, wait_for
from tests.support.numerics import assert_close_to_reference, gradient_budget, replay_budget
from tests.support.rank_records import RecordedRankProgress, rank_records
from tests.support.worker_service import Service, tenant_service
from worker.job import run_job

# 2 micro-batches of 2 per step: one per rank on two GPUs, both in one process on one
TWO_RANKS = {"batch_size": 2, "gradient_accumulation_steps": 2}
ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def two_gpu_settings(settings):
    """A worker with two "GPUs" (gloo processes here) behind an API that accepts 2-GPU jobs."""
    return settings.model_copy(update={"gpus": 2, "max_job_gpus": 2})


@pytest.fixture(scope="module")
def two_gpu_app(two_gpu_settings):
    return recording_app(two_gpu_settings)


@pytest.fixture
def service2(two_gpu_app, two_gpu_settings) -> Service:
    yield from tenant_service(two_gpu_app, two_gpu_settings)


def _run(service: Service, job_id: str, published: list | None = None, **kwargs) -> str:
    published = [] if published is None else published
    return run_job(job_id, settings=kwargs.pop("settings", service.settings),
                   publish=lambda jid, gpus: published.append((jid, gpus)) or True, **kwargs)


def _metrics(service: Service, job_id: str, name: str) -> torch.Tensor:
    with session_scope(service.settings) as session:
        rows = session.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step))
        return torch.tensor([row.values[name] for row in rows if name in row.values], dtype=torch.float64)


def _adapter_row(service: Service, job_id: str) -> Artifact:
    with session_scope(service.settings) as session:
        return session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "adapter")).one()


def _adapter(service: Service, job_id: str) -> dict[str, torch.Tensor]:
    prefix = _adapter_row(service, job_id).storage_prefix
    return load_file(str(Path(service.settings.storage_url) / prefix / ADAPTER_FILE))


def _files(service: Service, job_id: str) -> dict[str, str]:
    """The adapter artifact's files: {path: sha256}."""
    return {file["path"]: file["sha256"] for file in _adapter_row(service, job_id).files}


def test_more_gpus_than_any_worker_has_is_a_400_naming_gpus(service):
    response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers,
                                   json={"model": "tiny-llama", "training_file": service.upload(), "gpus": 2})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "gpus" and "at most 1" in error["message"] and "DORA_MAX_JOB_GPUS" in error["message"]
    for bad in (0, -1, "two"):
        response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers,
                                       json={"model": "tiny-llama", "training_file": service.upload(), "gpus": bad})
        assert response.status_code == 400 and response.json()["error"]["param"] == "gpus", response.text


def test_a_two_gpu_job_is_published_for_two_gpus_and_a_one_gpu_worker_does_not_take_it(service2, settings):
    job_id = service2.create(dora_method(**TWO_RANKS), gpus=2)
    assert service2.get(job_id)["gpus"] == 2 and service2.row(job_id).gpus == 2
    assert service2.client.app.state.published_gpus[job_id] == 2  # its queue: gpu-x2
    one_gpu = settings.model_copy(update={"gpus": 1})
    assert _run(service2, job_id, settings=one_gpu) == "skipped"  # a message in the wrong queue
    assert service2.row(job_id).status == "queued" and service2.row(job_id).attempt == 0


def test_a_two_gpu_job_trains_as_two_ranks_and_gives_the_one_gpu_jobs_result(service2, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    """The 2-GPU job ran as two ranks of one group and gave the 1-GPU job's run where that is
    machine-independent (the module docstring's tolerance): steps, batches, step 1, outputs."""
    monkeypatch.setattr("worker.ranks.RankProgress", functools.partial(RecordedRankProgress, records=tmp_path))
    method = dora_method(**TWO_RANKS)
    one = service2.create(method, seed=7, outputs=["adapter"])
    two = service2.create(method, seed=7, outputs=["adapter"], gpus=2)
    assert _run(service2, one) == "succeeded"
    assert rank_records(tmp_path) == []  # a 1-GPU job trains in its own process
    started = time.monotonic()
    assert _run(service2, two) == "succeeded", service2.get(two)
    print(f"2-rank job: {time.monotonic() - started:.1f} s")
    ranks = rank_records(tmp_path)
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)], ranks
    assert len({r["pid"] for r in ranks} | {os.getpid()}) == 3, ranks  # two processes besides the job's

    job = service2.get(two)
    assert job["attempt"] == 1 and job["trained_tokens"] == service2.get(one)["trained_tokens"]
    assert service2.steps(two) == service2.steps(one) == [1, 2, 3, 4, 5, 6]  # rank 0 wrote each step once
    # the same batches at every step: the trained (answer) tokens of each step's global batch
    assert torch.equal(_metrics(service2, two, "trained_tokens"), _metrics(service2, one, "trained_tokens"))
    assert torch.isfinite(_metrics(service2, two, "loss")).all()
    assert any(m.startswith("Training on 25 examples for 6 steps") for m in service2.events(two))

    # step 1, before any update: the global batch's loss and gradient norm, summed over the ranks
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(tiny_model_dir)
    reference = _adapter(service2, one)
    elements = sum(tensor.numel() for tensor in reference.values())
    assert_close_to_reference(_metrics(service2, two, "loss")[:1], _metrics(service2, one, "loss")[:1],
                              replay_budget(model_config), what="fp32 step-1 loss")
    assert_close_to_reference(_metrics(service2, two, "grad_norm")[:1], _metrics(service2, one, "grad_norm")[:1],
                              gradient_budget(model_config, torch.float32, adapter_elements=elements),
                              what="fp32 step-1 grad_norm")

    # the outputs: rank 0's checkpoints and adapter, loadable, the 1-GPU job's tensors and config
    checkpoints = service2.checkpoints(two)
    assert [c.step for c in checkpoints] == [3, 6]
    losses = _metrics(service2, two, "loss")
    assert [c.metrics["train_loss"] for c in checkpoints] == [float(losses[2]), float(losses[5])]
    adapter = _adapter(service2, two)
    assert {k: (t.shape, t.dtype) for k, t in adapter.items()} == {k: (t.shape, t.dtype) for k, t in reference.items()}
    assert all(torch.isfinite(tensor).all() for tensor in adapter.values())
    last = load_file(str(Path(service2.settings.storage_url) / checkpoints[-1].storage_key / ADAPTER_FILE))
    assert last.keys() == adapter.keys() and all(torch.equal(last[k], adapter[k]) for k in adapter), \
        "the adapter is not the step-6 checkpoint's"
    assert _files(service2, two)["adapter_config.json"] == _files(service2, one)["adapter_config.json"]
    assert not (Path(service2.settings.work_dir) / two).exists()


def test_a_failing_rank_fails_the_job_with_its_own_readable_error_and_no_retry(service2):
    # every row fits the upload rules, but none keeps an answer token within max_seq_len
    job_id = service2.create(dora_method(max_seq_len=8, **TWO_RANKS), gpus=2)
    published = []
    assert _run(service2, job_id, published=published) == "failed"
    job = service2.get(job_id)
    assert job["attempt"] == 1 and not published, job  # classified in the ranks' parent: no retry
    assert job["error"]["code"] == "invalid_training_file" and "line 1" in job["error"]["message"]
    assert "Traceback" not in job["error"]["message"] and "ChildFailedError" not in job["error"]["message"]


def _in_thread(service: Service, job_id: str, **kwargs):
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("value", _run(service, job_id, **kwargs)))
    thread.start()
    return thread, outcome


def _descendants() -> set[int]:
    """This test process's descendants but multiprocessing's resource tracker (the first spawned
    process starts it, and it lives as long as the test process)."""
    def tracker(pid: int) -> bool:
        try:
            return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True

    return {pid for pid in descendant_pids(os.getpid()) if not tracker(pid)}


def test_cancel_ends_every_rank_within_a_step(service2):
    job_id = service2.create(dora_method(max_steps=400, checkpoint_interval=50, **TWO_RANKS), gpus=2)
    before = _descendants()  # other fixtures' servers (moto's S3, say) are children of this process too
    thread, outcome = _in_thread(service2, job_id)
    wait_for(lambda: service2.steps(job_id) and service2.steps(job_id)[-1] >= 2, timeout=120, what="step 2")
    ranks = _descendants() - before
    assert len(ranks) == 2, ranks  # the two ranks
    at_request = service2.cancel(job_id)["progress"]["step"]
    thread.join(timeout=120)
    assert outcome.get("value") == "cancelled"
    assert not wait_until_gone(ranks, timeout=30), "a rank outlived the cancelled job"
    job = service2.get(job_id)
    assert job["status"] == "cancelled" and job["result_files"] == [] and service2.artifacts(job_id) == []
    assert service2.steps(job_id)[-1] <= at_request + 2
