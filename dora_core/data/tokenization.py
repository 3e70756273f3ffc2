"""Tokenising rendered rows into input_ids and labels, with truncation to `max_seq_len`.

Labels are the input ids themselves (not shifted: transformers' causal-LM loss shifts) with
-100 on every token outside the trained character spans. A token is trained when its
character range overlaps a span, so a token that straddles the prompt/answer boundary (a
BPE merge across it) is trained: the model has to produce it to produce the answer.

Fast tokenizers give character offsets and the whole text is tokenised in one piece, exactly
as at inference. A tokenizer without offsets (a slow, Python one) is fed the text piece by
piece at span boundaries instead; that can differ from whole-text tokenisation at a boundary.

Truncation keeps the first `max_seq_len` tokens. Rows that end up unusable are returned as
`DroppedRow`s, never silently lost: no tokens at all, or no trained token left (`prepare`
decides what to do with them).

A row the tokenizer raises on (a Rust tokenizer's TypeError on text it cannot take) is a
`TokenizerError` naming every such row by line: a property of the data, which no retry
changes (`prepare` reports it as a DatasetFormatError, which fails the job at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dora_core.data.templates import RenderedExample, Span

IGNORE_INDEX = -100
_BATCH = 512  # rows per call into the Rust tokenizer
# what tokenizers raise on input they cannot take (the Rust one: TypeError for text that is not
# valid Unicode); anything else (a time limit, an interrupt) is not about the data and goes on up
_REFUSED_INPUT = (TypeError, ValueError)


@dataclass(slots=True)
class TokenizedExample:
    line: int
    input_ids: list[int]  # (seq,) with seq <= max_seq_len
    labels: list[int]  # (seq,) token id where trained, IGNORE_INDEX elsewhere
    truncated: bool  # the row was longer than max_seq_len

    @property
    def trainable_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass(frozen=True, slots=True)
class DroppedRow:
    line: int
    reason: str


class TokenizerError(ValueError):
    """The tokenizer raised on these rows (`rows`: line and reason each)."""

    def __init__(self, rows: Sequence[DroppedRow]) -> None:
        self.rows = list(rows)
        super().__init__("; ".join(f"line {row.line}: {row.reason}" for row in self.rows[:5]))


def tokenize_examples(
    rendered: Sequence[RenderedExample], tokenizer: Any, *, max_seq_len: int
) -> tuple[list[TokenizedExample], list[DroppedRow]]:
    """Tokenise, label and truncate every row; unusable rows come back as DroppedRow.

    Raises TokenizerError, after trying every row, if the tokenizer raised on any."""
    kept: list[TokenizedExample] = []
    dropped: list[DroppedRow] = []
    failed: list[DroppedRow] = []
    for start in range(0, len(rendered), _BATCH):
        batch = rendered[start : start + _BATCH]
        for row, encoded in zip(batch, _tokenize_guarded(batch, tokenizer, failed), strict=True):
            if encoded is None:
                continue
            example, problem = _truncate(row.line, *encoded, max_seq_len)
            if example is None:
                dropped.append(DroppedRow(row.line, problem))
            else:
                kept.append(example)
    if failed:
        raise TokenizerError(failed)
    return kept, dropped


def _tokenize_guarded(
    batch: Sequence[RenderedExample], tokenizer: Any, failed: list[DroppedRow]
) -> list[tuple[list[int], list[int]] | None]:
    """`_tokenize_batch`, and when the tokenizer raises, row by row to find the rows it refuses
    (None for each, with its reason added to `failed`)."""
    try:
        return _tokenize_batch(batch, tokenizer)
    except _REFUSED_INPUT:
        pass  # the rows that cause it are found below
    results: list[tuple[list[int], list[int]] | None] = []
    for row in batch:
        try:
            results.append(_tokenize_batch([row], tokenizer)[0])
        except _REFUSED_INPUT as error:
            reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
            failed.append(DroppedRow(row.line, f"the tokenizer cannot encode this row ({reason})"))
            results.append(None)
    return results


def _tokenize_batch(batch: Sequence[RenderedExample], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    if not getattr(tokenizer, "is_fast", False):
        return [_tokenize_by_pieces(row, tokenizer) for row in batch]
    encoded = tokenizer(
        [row.text for row in batch], add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False
    )
    return [
        (ids, labels_from_offsets(ids, offsets, row.spans))
        for row, ids, offsets in zip(batch, encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ]


def labels_from_offsets(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[int]:
    """Labels for tokens with character `offsets`, trained where they overlap `spans` (both sorted)."""
    labels, span_index = [], 0
    for token, (start, end) in zip(ids, offsets, strict=True):
        end = max(end, start + 1)  # a zero-width token counts as the character it sits on
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] < end
        labels.append(token if inside else IGNORE_INDEX)
    return labels


def _tokenize_by_pieces(row: RenderedExample, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Fallback without offsets: tokenise the text between span boundaries separately."""
    ids: list[int] = []
    labels: list[int] = []
    position = 0
    for start, end in (*row.spans, (len(row.text), len(row.text))):
        for piece, trained in ((row.text[position:start], False), (row.text[start:end], True)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                labels += piece_ids if trained else [IGNORE_INDEX] * len(piece_ids)
        position = end
    return ids, labels


def _truncate(line: int, ids: list[int], labels: list[int], max_seq_len: int) -> tuple[TokenizedExample | None, str]:
    if not ids:
        return None, "empty after tokenisation"
    if all(label == IGNORE_INDEX for label in labels):
        return None, "no trainable tokens"
    truncated = len(ids) > max_seq_len
    example = TokenizedExample(line, ids[:max_seq_len], labels[:max_seq_len], truncated)
    if example.trainable_tokens == 0:
        return None, f"no trainable tokens within max_seq_len={max_seq_len} (row has {len(ids)} tokens)"
    return example, ""
