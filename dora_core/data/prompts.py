"""Prompts for reinforcement fine-tuning: a prompts row -> its prompt's token ids and its grader item.

A prompts row (dora_formats' PROMPTS: `messages` ending before the answer, plus the fields a
grader reads) is rendered with the run's chat template and the generation prompt, as the
sample prompts are (training/samples.py), and tokenised. Nothing is trained on the prompt: the
model's own sampled answers are (training/grpo.py). A prompt longer than `max_seq_len` tokens
is dropped and reported with its line (no room is left for an answer); the template failing on
a row drops it too. An item holds `input_ids` and `row` (the row's index in `examples`, whose
`item` the grader reads); `PromptCollator` gives a micro-batch's items as they are: the
sequences exist only after sampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dora_core.data.tokenization import DroppedRow
from dora_formats import Example


def tokenize_prompts(examples: Sequence[Example], tokenizer: Any, *, template: str,
                     max_seq_len: int) -> tuple[list[dict[str, Any]], list[DroppedRow]]:
    """(items, dropped rows): each usable row's prompt ids with the generation prompt."""
    items, dropped = [], []
    for index, example in enumerate(examples):
        messages = [{"role": s.role, "content": s.content} for s in example.segments]
        try:
            text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as error:  # noqa: BLE001 - jinja raises whatever the template author chose
            dropped.append(DroppedRow(example.line, f"chat template failed: {error}"))
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids or len(ids) >= max_seq_len:
            dropped.append(DroppedRow(example.line, f"prompt of {len(ids)} tokens leaves no room for an answer "
                                                    f"within max_seq_len {max_seq_len}"))
            continue
        items.append({"input_ids": list(ids), "row": index})
    return items, dropped


class PromptCollator:
    """A micro-batch of prompt items, unchanged (generation pads them; see training/grpo.py)."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return list(features)
