"""Refuse, when it is created, a job that would not fit the GPU of any configured worker.

The operator lists the workers' GPU memory (`DORA_WORKER_GPU_MEMORY_GIB`, e.g. `[80, 24]`); the
job's run is planned with the torch-free memory planner (dora_contract/memory_plan.py) from the
registered model's config.json, the way the worker will run it: bf16 for `precision: auto`, and
`gradient_checkpointing: auto` counted as on, since the worker turns it on when the plan needs it.
A job whose plan exceeds the largest GPU could only end in CUDA out of memory at micro-batch 1, so
it is a 400 at once, naming the one setting whose change would make it fit, with the estimate and
the limit in the message. A job on `gpus` N > 1 is planned per process, sharded (FSDP) when its
parallelism is fsdp, or auto and the weights would crowd one GPU, as the worker will choose; more
GPUs (up to DORA_MAX_JOB_GPUS) is one of the changes the message may advise. Nothing is checked
without configured workers (the default: CPU workers) or when the API cannot read the model's
config (a hub id, a GGUF source before the worker has converted it): the run's own OOM handling is
then the only guard.
"""

from __future__ import annotations

from typing import Any

from api.errors import bad_request
from api.schemas.jobs import JobCreate
from api.services.methods import param_of
from dora_contract import RunSettings
from dora_contract.memory_plan import (
    GIB,
    UnsupportedConfigError,
    auto_sharding,
    largest_fitting_micro_batch,
    plan_memory,
    precision_bytes,
)
from store.base_models import registered_model_config
from store.settings import Settings

CODE = "exceeds_worker_memory"
SMALLEST_SEQ_LEN = 256  # below this, shortening max_seq_len is not advice worth giving


def check_fits_a_worker(*, settings: Settings, request: JobCreate, run_config: dict[str, Any]) -> None:
    """Raise a 400 when the job's plan exceeds every configured worker's GPU memory."""
    if not settings.worker_gpu_memory_gib:
        return
    config = registered_model_config(settings, request.model)
    if config is None:
        return
    run = RunSettings.from_data(run_config)
    adapter, training = run.adapter, run.training
    limit = int(max(settings.worker_gpu_memory_gib) * GIB)
    dtype_bytes = precision_bytes(training.precision, on_gpu=True)
    checkpointing = training.gradient_checkpointing is not False  # auto: the worker turns it on if needed
    per_example = 2 if run.dpo is not None else 1  # sequences a batch_size of 1 runs: a DPO pair is two
    if run.reinforcement is not None:  # a reinforcement prompt is its G sampled answers (within max_seq_len)
        per_example = run.reinforcement.samples_per_prompt

    def plan(gpus: int = request.gpus, **changes):
        changed = training.model_copy(update={k: v for k, v in changes.items() if k != "gradient_checkpointing"})
        if per_example > 1:  # a DPO micro-batch of B pairs is 2B sequences (suggestions stay in pairs)
            changed = changed.model_copy(update={"micro_batch_size": per_example * changed.micro_batch_size})
        return plan_memory(config, adapter, changed, dtype_bytes=dtype_bytes,
                           gradient_checkpointing=changes.get("gradient_checkpointing", checkpointing),
                           **_spread(changed, gpus, config, adapter, dtype_bytes, limit))

    try:
        estimate = plan()
    except UnsupportedConfigError:
        return
    if estimate.total <= limit:
        return
    field, advice = _what_to_change(plan, training, checkpointing, limit, config, adapter, dtype_bytes,
                                    gpus=request.gpus, max_gpus=settings.max_job_gpus, per_example=per_example)
    raise bad_request(
        f"This job needs an estimated {estimate.describe()} of GPU memory"
        f"{f' per GPU (gpus: {request.gpus})' if request.gpus > 1 else ''}, more than the largest worker's "
        f"{limit / GIB:.1f} GiB (DORA_WORKER_GPU_MEMORY_GIB): {advice}",
        param=field if field in ("model", "gpus") else param_of(request, "training", field), code=CODE)


def _spread(training, gpus: int, config, adapter, dtype_bytes: int, limit: int) -> dict[str, Any]:
    """plan_memory's processes and sharding for a run on `gpus` GPUs, chosen as the worker does."""
    if gpus == 1 or training.parallelism == "ddp":
        return {"processes": gpus, "sharding": "none"}
    if training.parallelism == "fsdp":
        return {"processes": gpus, "sharding": "fsdp"}
    whole = plan_memory(config, adapter, training, dtype_bytes=dtype_bytes, gradient_checkpointing=True)
    return {"processes": gpus, "sharding": auto_sharding(processes=gpus, weight_bytes=whole.base_weights,
                                                         memory_bytes=limit)}


def _what_to_change(plan, training, checkpointing: bool, limit: int, config, adapter, dtype_bytes: int, *,
                    gpus: int, max_gpus: int, per_example: int = 1) -> tuple[str, str]:
    """(the contract field to name, advice): the cheapest change that fits, in this order."""
    if not checkpointing and plan(gradient_checkpointing=True).total <= limit:
        return "gradient_checkpointing", "turn gradient_checkpointing on (true or auto)"
    batch = largest_fitting_micro_batch(config, adapter, training, dtype_bytes=dtype_bytes, memory_bytes=limit,
                                        gradient_checkpointing=True,
                                        **_spread(training, gpus, config, adapter, dtype_bytes, limit)) // per_example
    if batch >= 1:
        return "micro_batch_size", f"a batch_size of at most {batch} fits (gradient accumulation keeps the update)"
    if training.max_seq_len > SMALLEST_SEQ_LEN and plan(micro_batch_size=1, max_seq_len=SMALLEST_SEQ_LEN,
                                                        gradient_checkpointing=True).total <= limit:
        return "max_seq_len", "with batch_size 1 it fits only with a shorter max_seq_len"
    for more in range(gpus + 1, max_gpus + 1):
        if plan(more, micro_batch_size=1, parallelism="fsdp", gradient_checkpointing=True).total <= limit:
            return "gpus", f"it fits sharded over {more} GPUs (gpus: {more}, parallelism fsdp or auto)"
    if training.quantization == "none" and plan(micro_batch_size=1, quantization="nf4",
                                                gradient_checkpointing=True).total <= limit:
        return "quantization", "its weights fit only quantized: quantization nf4"
    return "model", "the model does not fit these GPUs; choose a smaller one"
