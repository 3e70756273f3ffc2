"""Scenarios run on more than one stack (embedded defaults, Redis + PostgreSQL)."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

from tests.support.jobs import dora_method, wait_for
from tests.support.stack import E2E_RUN, TIMINGS, Stack


def extract(archive: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def same_logits_from_adapter_and_merged(adapter_dir: Path, merged_dir: Path, tiny_model_dir: Path) -> None:
    """The downloaded adapter, loaded by PEFT on the base model, and the downloaded merged model agree."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.support.numerics import assert_close_to_reference, assert_distinguishable, float64_model, model_budget

    # Evaluated in float64 (the files hold fp32 values, exact in float64): PEFT with the adapter
    # computes the same math as the merged model except that the merged file holds W' rounded to
    # fp32 after an fp32 merge, so the two agree within fp32's forward budget (tests/support/numerics.py)
    float64 = torch.float64
    base = float64_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=float64))
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    merged = float64_model(AutoModelForCausalLM.from_pretrained(merged_dir, dtype=float64)).eval()
    plain = float64_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=float64)).eval()
    limit = model_budget(plain, torch.float32)
    ids = torch.arange(3, 35).reshape(2, 16)
    with torch.no_grad():
        adapted, merged_logits, base_logits = with_adapter(input_ids=ids).logits, merged(ids).logits, plain(ids).logits
    assert_close_to_reference(merged_logits, adapted, limit, what="merged model's logits")
    assert_distinguishable(base_logits, adapted, limit, what="training must change the model")


def timed_job(stack: Stack, name: str) -> dict:
    """Create a job and time it: submit -> first training step, and submit -> succeeded."""
    api = stack.api
    submitted = time.monotonic()
    job = api.create(dora_method(**E2E_RUN), outputs=["adapter", "merged"])
    wait_for(lambda: api.steps(job["id"]), timeout=90, what="the first training step", interval=0.05)
    first_step = time.monotonic() - submitted
    job = api.wait(job["id"])
    TIMINGS[name] = {"submit_to_first_step": round(first_step, 2), "submit_to_succeeded":
                     round(time.monotonic() - submitted, 2), "steps": job["progress"]["total_steps"]}
    return job


def crash_after_first_checkpoint_and_resume(stack: Stack, *, new_work_dir: str | None) -> dict:
    """SIGKILL the worker (parent, job process, reconciler) after the job's first checkpoint;
    a new worker finishes the job from it."""
    api = stack.api
    job = api.create(dora_method(max_steps=80, checkpoint_interval=4), outputs=["adapter"])
    wait_for(lambda: api.checkpoints(job["id"]), timeout=90, what="the first checkpoint", interval=0.05)
    stack.workers[-1].kill()
    killed_at = max(api.steps(job["id"]))
    assert api.job(job["id"])["status"] == "running"  # the dead worker still "holds" it until the lease ends
    stack.start_worker(work_dir=new_work_dir)
    job = api.wait(job["id"], timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2 and job["resumed_from_step"] >= 4 and job["resumed_from_step"] <= killed_at
    assert api.steps(job["id"]) == list(range(1, 81))  # continuous in step: none missing, none twice
    events = api.events(job["id"])
    assert f"Attempt 2 resumed from the checkpoint at step {job['resumed_from_step']}" in events
    assert [a["name"] for a in api.artifacts(job["id"])] == ["adapter"] and len(job["result_files"]) == 1
    outputs = Path(stack.env["DORA_STORAGE_URL"]) / "tenants" / job["organization_id"] / "jobs" / job["id"] / "outputs"
    assert [p.name for p in outputs.iterdir()] == ["attempt-2"]  # exactly one set of final artifacts
    return job
