"""Which examples each optimiser step sees: a pure function of (seed, step).

Step k of a run uses global batch k % steps_per_epoch of epoch k // steps_per_epoch, taken
from a permutation seeded by (seed, epoch). Nothing about the data position has to be
stored beyond the step number, so a resumed run sees exactly the batches it would have seen,
and halving the micro-batch after an out-of-memory error keeps the same global batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchSchedule:
    dataset_size: int
    global_batch: int  # micro_batch_size * gradient_accumulation_steps
    epochs: float
    max_steps: int | None
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.dataset_size / self.global_batch))

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * self.steps_per_epoch))

    def epoch_of(self, step: int) -> float:
        """Fractional epoch reached after `step` optimiser steps."""
        return step / self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        """Dataset indices of the global batch for 0-based step `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return order[position * self.global_batch:(position + 1) * self.global_batch].tolist()


def micro_batches(indices: list[int], micro_batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), micro_batch_size):
        yield indices[start:start + micro_batch_size]
