"""How many GPUs this worker has, the one number its queues and its claims follow.

A worker with G GPUs consumes the queues of jobs needing 1..G GPUs (store/queue.py) and runs one
job at a time, so a job it receives always finds its GPUs free; a job needing N runs as N
processes of one torch.distributed run on GPUs 0..N-1 of those the worker sees. Which GPUs a
worker sees is CUDA_VISIBLE_DEVICES (`dora worker --gpu 0,1`): a host with 8 GPUs can run one
worker with all 8, or e.g. two with 4 each. `DORA_GPUS` overrides the count; on a CPU-only host
it says how many processes (gloo) a worker may run a job as, which is how the tests run
multi-GPU jobs without GPUs.
"""

from __future__ import annotations

import os


def visible_cuda_devices() -> int:
    """CUDA devices this process may use, counted without initialising CUDA (the worker's parent
    must never do that: its job processes are forked from it)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_gpus(configured: int | None) -> int:
    """DORA_GPUS when set, else every visible CUDA device; a CPU worker counts as one."""
    return configured if configured is not None else max(1, visible_cuda_devices())
