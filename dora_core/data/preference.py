"""Preference pairs for DPO: a preference row -> (preferred, non-preferred) tokenised examples.

Each side is an ordinary conversation (the prompt's messages + one assistant answer) rendered
and tokenised exactly as SFT rows are (templates.py, tokenization.py), so the completion-only
mask is the one SFT uses: the prompt's tokens carry label -100 and the answer's (with the
template's end-of-turn) carry their ids. A pair is kept only when both sides are: a side
dropped (no answer token left within max_seq_len) drops the row, reported with its line.

A dataset item holds both sides (`input_ids`, `labels`, `rejected_input_ids`, `rejected_labels`);
`PreferenceCollator` stacks a micro-batch of B pairs as 2B rows, the B preferred first, so one
forward scores both (TRL's "concatenated forward").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from dora_core.data.collator import DataCollator
from dora_core.data.tokenization import DroppedRow, TokenizedExample
from dora_formats import Example


def rejected_examples(examples: Sequence[Example]) -> list[Example]:
    """The non-preferred side of each preference row, as a conversation of its own."""
    return [replace(example, segments=example.rejected, rejected=None) for example in examples]


def pair_up(chosen: Sequence[TokenizedExample], rejected: Sequence[TokenizedExample],
            reasons: Mapping[int, str]) -> tuple[list[dict[str, list[int]]], list[DroppedRow]]:
    """Items of the rows whose sides both survived, and the rows lost by their non-preferred
    side alone (`reasons`: why a side was dropped, by line, where the report lists it)."""
    by_line = {example.line: example for example in rejected}
    items = [{"input_ids": c.input_ids, "labels": c.labels, "rejected_input_ids": by_line[c.line].input_ids,
              "rejected_labels": by_line[c.line].labels} for c in chosen if c.line in by_line]
    lost = [DroppedRow(c.line, f"non_preferred_output: {reasons.get(c.line, 'dropped')}") for c in chosen
            if c.line not in by_line]
    return items, lost


class PreferenceCollator:
    """B pairs -> one batch of 2B rows (preferred 0..B-1, non-preferred B..2B-1), right-padded
    to the longest of all 2B: `input_ids`, `labels`, `attention_mask`, each (2B, seq)."""

    def __init__(self, pad_token_id: int) -> None:
        self.rows = DataCollator(pad_token_id)

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        chosen = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        rejected = [{"input_ids": f["rejected_input_ids"], "labels": f["rejected_labels"]} for f in features]
        return self.rows(chosen + rejected)
