"""`gradient_checkpointing: auto`, decided by the memory planner (dora_contract/memory_plan.py).

Checkpointing is on exactly when the planned peak of a step without it exceeds the device's
memory: recomputing every layer's forward in backward costs about a third more time per step, so
it is only paid for when the memory is not there. On a GPU the device's memory is its total
memory; on the CPU it is the machine's physical memory, so a small model there trains without
checkpointing (as before) and only a plan larger than the RAM turns it on. The plan is the one the
API checks a job against when it is created, from the same config.json.

The micro-batch is not chosen here: `micro_batch_size` is the user's (4 by default), and the
planner is an estimate, so shrinking it ahead of time on a plan that is too pessimistic would make
runs slower for nothing. A step that really runs out of CUDA memory halves it (run.py, doubling
the accumulation, so the update is the same) and goes on from the last checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from dora_contract.memory_plan import GIB, Sharding, plan_memory
from dora_contract.training import MIN_SEQ_LEN
from dora_core.training.settings import RunConfig


def device_memory_bytes(device: torch.device) -> int:
    """A GPU's total memory, or the machine's physical memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def recommended_gradient_checkpointing(model_config: Mapping[str, Any], config: RunConfig, *, dtype_bytes: int,
                                       memory_bytes: int, processes: int = 1,
                                       sharding: Sharding = "none",
                                       longest_sequence: int | None = None) -> tuple[bool, str]:
    """(on, a line saying why) for gradient_checkpointing="auto".

    `longest_sequence`: the longest tokenized training example, when the run does not pack. Batches
    are padded to their longest example, not to max_seq_len, so planning for max_seq_len would turn
    checkpointing on (a third more time per step) for short chat rows that fit many times over."""
    training = config.training
    if longest_sequence is not None and not training.packing:
        training = training.with_changes(max_seq_len=max(MIN_SEQ_LEN, min(longest_sequence, training.max_seq_len)))
    plan = plan_memory(model_config, config.adapter, training, dtype_bytes=dtype_bytes,
                       gradient_checkpointing=False, processes=processes, sharding=sharding)
    on = plan.total > memory_bytes
    verdict = "does not fit: gradient checkpointing on" if on else "fits: gradient checkpointing off"
    return on, (f"memory plan without gradient checkpointing: {plan.describe()} of {memory_bytes / GIB:.1f} GiB "
                f"{verdict}")
