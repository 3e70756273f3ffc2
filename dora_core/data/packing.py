"""Packing: several short examples per `max_seq_len` block, so fewer tokens are padding.

Examples are taken in order and never split (each is at most `max_seq_len` after truncation):
one that does not fit in the current block starts the next. Each block carries `position_ids`
restarting at 0 for every example. Given position_ids and no attention_mask, transformers
builds a block-diagonal causal mask from the restarts (`masking_utils.find_packed_sequence_indices`;
flash-attention uses the same restarts), so packed examples do not attend to one another.
That holds when the forward runs without a KV cache (`use_cache=False`, as in training).
The first label of each example is -100: its token would be predicted from the previous
example's last token, which is not in its context.
"""

from __future__ import annotations

from collections.abc import Sequence

from dora_core.data.tokenization import IGNORE_INDEX, TokenizedExample

Block = dict[str, list[int]]  # input_ids, labels, position_ids: each (block_len,) <= max_seq_len


def pack_examples(examples: Sequence[TokenizedExample], *, max_seq_len: int) -> list[Block]:
    """Greedy in-order packing into blocks of at most `max_seq_len` tokens."""
    blocks: list[Block] = []
    current: Block = _empty_block()
    for example in examples:
        length = len(example.input_ids)
        if length > max_seq_len:
            raise ValueError(f"line {example.line}: {length} tokens exceeds max_seq_len={max_seq_len}; truncate first")
        if current["input_ids"] and len(current["input_ids"]) + length > max_seq_len:
            blocks.append(current)
            current = _empty_block()
        current["input_ids"] += example.input_ids
        current["labels"] += [IGNORE_INDEX, *example.labels[1:]]
        current["position_ids"] += range(length)
    if current["input_ids"]:
        blocks.append(current)
    return blocks


def _empty_block() -> Block:
    return {"input_ids": [], "labels": [], "position_ids": []}
