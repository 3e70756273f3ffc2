"""Batching examples of different lengths for a DataLoader or transformers' Trainer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from dora_core.data.tokenization import IGNORE_INDEX


class DataCollator:
    """Right-pads a list of examples into tensors.

    Unpacked examples give `input_ids`, `labels` and `attention_mask`, each (batch, seq)
    with seq the longest example (rounded up to `pad_to_multiple_of`): padding is
    `pad_token_id` in input_ids, -100 in labels, 0 in attention_mask.

    Packed blocks (examples with `position_ids`) give `input_ids`, `labels` and
    `position_ids` and no attention_mask, so transformers masks attention between the
    packed examples (see `dora_core.data.packing`); the padding tail gets its own positions
    restarting at 0, making it a separate (fully ignored) sequence.
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None) -> None:
        if pad_token_id is None:
            raise ValueError("pad_token_id is required (load_tokenizer sets pad to eos when missing)")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": _pad(features, "input_ids", width, lambda n: [self.pad_token_id] * n),
            "labels": _pad(features, "labels", width, lambda n: [IGNORE_INDEX] * n),
        }
        if "position_ids" in features[0]:
            batch["position_ids"] = _pad(features, "position_ids", width, lambda n: list(range(n)))
        else:
            lengths = torch.tensor([len(feature["input_ids"]) for feature in features])  # (batch,)
            batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (batch, seq)
        return batch


def _pad(
    features: Sequence[Mapping[str, Sequence[int]]], key: str, width: int, filler: Callable[[int], list[int]]
) -> torch.Tensor:
    rows = [list(feature[key]) + filler(width - len(feature[key])) for feature in features]
    return torch.tensor(rows, dtype=torch.long)  # (batch, width)
