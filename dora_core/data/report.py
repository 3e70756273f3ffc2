"""The dataset report: what the training run will see, in a JSON-serialisable dict.

Shown to users before and with a run (the worker stores it next to the metrics), so that
truncation, dropped rows and the loss mask can be checked by eye: the rendered example marks
trained text with TRAIN_OPEN/TRAIN_CLOSE.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from dora_core.data.tokenization import IGNORE_INDEX, DroppedRow, TokenizedExample

TRAIN_OPEN, TRAIN_CLOSE = "⟦", "⟧"
MAX_LISTED_DROPS = 50


def split_report(
    *,
    source: str,
    format: str | None,
    unit: str,
    rows: int,
    examples: Sequence[TokenizedExample],
    dropped: Sequence[DroppedRow],
    mask_methods: Counter[str],
    blocks: int | None = None,
) -> dict[str, Any]:
    """Counts for one split (train or validation); `rows` counts the valid rows read."""
    lengths = [len(example.input_ids) for example in examples]
    return {
        "source": source,
        "format": format,
        "unit": unit,
        "rows": rows,
        "examples": len(examples),
        "tokens": sum(lengths),
        "trainable_tokens": sum(example.trainable_tokens for example in examples),
        "max_tokens": max(lengths, default=0),
        "mean_tokens": round(sum(lengths) / len(lengths), 2) if lengths else 0.0,
        "truncated_rows": sum(example.truncated for example in examples),
        "dropped_rows": len(dropped),
        "dropped": [{"line": row.line, "reason": row.reason} for row in dropped[:MAX_LISTED_DROPS]],
        "mask_methods": dict(sorted(mask_methods.items())),
        "packed_blocks": blocks,
    }


def rendered_example(example: TokenizedExample, tokenizer: Any) -> dict[str, Any]:
    """One example decoded, with the trained parts between TRAIN_OPEN and TRAIN_CLOSE."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    pieces = [_decode(tokenizer, ids) for _, ids in runs]
    marked = "".join(
        f"{TRAIN_OPEN}{piece}{TRAIN_CLOSE}" if trained else piece
        for (trained, _), piece in zip(runs, pieces, strict=True)
    )
    return {
        "line": example.line,
        "text": "".join(pieces),
        "marked_text": marked,
        "legend": f"loss is computed on the text between {TRAIN_OPEN} and {TRAIN_CLOSE}",
        "tokens": len(example.input_ids),
        "trainable_tokens": example.trainable_tokens,
    }


def warnings_for(name: str, split: dict[str, Any]) -> list[str]:
    """Human-readable warnings about one split's report."""
    warnings = []
    unit = split["unit"]
    if split["dropped_rows"]:
        first = ", ".join(f"{unit} {row['line']}: {row['reason']}" for row in split["dropped"][:3])
        warnings.append(f"{name}: {split['dropped_rows']} row(s) dropped ({first})")
    if split["truncated_rows"]:
        warnings.append(f"{name}: {split['truncated_rows']} row(s) truncated to max_seq_len")
    if split["mask_methods"].get("content_search"):
        warnings.append(
            f"{name}: the chat template could not be rendered incrementally for "
            f"{split['mask_methods']['content_search']} row(s); their loss mask was found by content search"
        )
    return warnings


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
