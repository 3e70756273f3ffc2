"""Holding out a validation set from the training rows, reproducibly."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from dora_core.data.errors import DataError

T = TypeVar("T")
FIELD = "training.validation_split"  # the run setting a DataError from here names


def split_examples(examples: Sequence[T], *, fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, validation): `round(fraction * n)` rows (at least 1) drawn with `random.Random(seed)`.

    Both parts keep file order (the training loop shuffles), and the same seed and rows always
    give the same split. At least one row must remain for training (else DataError: the same on
    every attempt, so a job fails at once).
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation_split must be between 0 and 1 (exclusive), got {fraction}", field=FIELD)
    count = max(1, round(fraction * len(examples)))  # api/services/jobs.py counts the same at creation
    if count >= len(examples):
        raise DataError(
            f"validation_split={fraction:g} of {len(examples)} rows leaves no training rows; "
            "use a smaller fraction, more rows, or a validation file",
            field=FIELD,
        )
    held_out = set(random.Random(seed).sample(range(len(examples)), count))
    train = [example for index, example in enumerate(examples) if index not in held_out]
    validation = [example for index, example in enumerate(examples) if index in held_out]
    return train, validation
