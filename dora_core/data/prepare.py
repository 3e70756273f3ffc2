"""`prepare_datasets`: dataset files + tokenizer -> training and validation sets and a report.

Order of work: read and validate every file first (DatasetFormatError, with line numbers,
before any tokenisation), split off validation rows, render, tokenise, truncate, pack.

Rows that validate but turn out unusable after tokenisation (no tokens, no trained token left
after truncation, template failure) are dropped and listed in the report with their line
numbers and a warning; the run goes on with the rest. Rows the tokenizer raises on are not
dropped: they are a DatasetFormatError naming their lines (such input should not have passed
validation, and a run without them is not the run asked for). If every row of the training (or
validation) set is dropped, DatasetFormatError is raised with those rows, since no run could
succeed. The validation set is never packed: eval loss is measured on whole examples.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dora_core.data.collator import DataCollator
from dora_core.data.errors import DataError
from dora_core.data.packing import pack_examples
from dora_core.data.preference import PreferenceCollator, pair_up, rejected_examples
from dora_core.data.prompts import PromptCollator, tokenize_prompts
from dora_core.data.report import MAX_LISTED_DROPS, rendered_example, split_report, warnings_for
from dora_core.data.sources import file_sha256, read_examples
from dora_core.data.split import split_examples
from dora_core.data.templates import RenderedExample, RenderError, chat_template_for, render_example
from dora_core.data.tokenization import DroppedRow, TokenizedExample, TokenizerError, tokenize_examples
from dora_formats import PREFERENCE, PROMPTS, DatasetFormatError, Example, ValidationIssue


class TokenizedDataset(torch.utils.data.Dataset):
    """A list of `{"input_ids", "labels"[, "position_ids"]}` dicts of int lists (see DataCollator)."""

    def __init__(self, items: Sequence[dict[str, list[int]]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


@dataclass
class PreparedData:
    train: TokenizedDataset
    validation: TokenizedDataset | None
    report: dict[str, Any]  # JSON-serialisable; see dora_core.data.report
    collator: DataCollator | PreferenceCollator | PromptCollator
    # the validation rows as read (file order), for the prompts samples are generated from
    validation_examples: list[Example] = field(default_factory=list)
    # the training rows as read: a reinforcement item's `row` indexes them (the grader's item)
    train_examples: list[Example] = field(default_factory=list)


@dataclass
class _Split:
    """One set on its way through the pipeline."""

    name: str
    source: str
    format: str | None
    unit: str
    examples: list[Example]


def prepare_datasets(
    train_path: str | os.PathLike[str],
    tokenizer: Any,
    *,
    max_seq_len: int,
    validation_path: str | os.PathLike[str] | None = None,
    validation_split: float = 0.0,
    train_on_inputs: bool = False,
    packing: bool = False,
    seed: int = 0,
    preference: bool = False,
    reinforcement: bool = False,
) -> PreparedData:
    """Read, validate, tokenise and (optionally) pack the datasets of one run.

    preference=True (a DPO run): the files must be preference rows, and the sets hold pairs
    (dora_core/data/preference.py); False: they must not be (only DPO trains on pairs).
    reinforcement=True: the files must be prompts rows (dora_core/data/prompts.py); False: they must not be."""
    if max_seq_len < 2:
        raise DataError(f"max_seq_len must be at least 2, got {max_seq_len}", field="training.max_seq_len")
    if validation_path is not None and validation_split:
        raise DataError("give either validation_path or validation_split, not both", field="training.validation_split")
    train, validation = _read_splits(train_path, validation_path, validation_split, seed)
    for split, setting in ((train, "train_file"), (validation, "validation_file")):
        if split is not None:
            _check_objective(split, preference=preference, reinforcement=reinforcement, setting=setting)
    template, template_source = chat_template_for(tokenizer)
    supervised = not (reinforcement or preference)  # pairs and prompts train on no input, are never packed
    report: dict[str, Any] = {
        "template": template_source,
        "max_seq_len": max_seq_len,
        "train_on_inputs": train_on_inputs and supervised,
        "packing": packing and supervised,
        "seed": seed,
        "validation_split": validation_split,
        **({"prompts": True} if reinforcement else {"preference_pairs": True} if preference else {}),
        "train_sha256": file_sha256(train_path),
        "validation_sha256": file_sha256(validation_path) if validation_path is not None else None,
    }
    if reinforcement:
        return _prepare_prompts(train, validation, tokenizer, template=template, report=report, max_seq_len=max_seq_len)
    if preference:
        return _prepare_pairs(train, validation, tokenizer, template=template, report=report, max_seq_len=max_seq_len)
    options = {"template": template, "train_on_inputs": train_on_inputs, "max_seq_len": max_seq_len}
    train_examples, report["train"] = _tokenize_split(train, tokenizer, **options)
    train_items = pack_examples(train_examples, max_seq_len=max_seq_len) if packing else _items(train_examples)
    report["train"]["packed_blocks"] = len(train_items) if packing else None
    validation_set = None
    report["validation"] = None
    if validation is not None:
        validation_examples, report["validation"] = _tokenize_split(validation, tokenizer, **options)
        validation_set = TokenizedDataset(_items(validation_examples))
    report["example"] = rendered_example(train_examples[0], tokenizer)
    return _prepared(report, TokenizedDataset(train_items), validation_set, DataCollator(tokenizer.pad_token_id),
                     validation)


def _prepared(report: dict[str, Any], train_set: TokenizedDataset, validation_set: TokenizedDataset | None,
              collator: DataCollator | PreferenceCollator | PromptCollator, validation: _Split | None,
              **examples: list[Example]) -> PreparedData:
    """Every objective's result: its report with the warnings its sets earned, the validation rows as read."""
    report["warnings"] = [
        warning for name in ("train", "validation") if report[name] for warning in warnings_for(name, report[name])
    ]
    return PreparedData(train_set, validation_set, report, collator,
                        validation_examples=list(validation.examples) if validation is not None else [], **examples)


def _check_objective(split: _Split, *, preference: bool, reinforcement: bool, setting: str) -> None:
    if reinforcement and split.format != PROMPTS:
        raise DataError(f"{split.source} is in {split.format} format; reinforcement fine-tuning trains on prompts "
                        "rows ('messages' ending before the answer, plus the fields the grader reads)", field=setting)
    if not reinforcement and split.format == PROMPTS:
        raise DataError(f"{split.source} holds prompts without answers, which only reinforcement fine-tuning "
                        "trains on (set reinforcement, or method type 'reinforcement')", field=setting)
    if reinforcement:
        return
    if preference and split.format != PREFERENCE:
        raise DataError(f"{split.source} is in {split.format} format; DPO trains on preference rows ('input', "
                        "'preferred_output', 'non_preferred_output')", field=setting)
    if not preference and split.format == PREFERENCE:
        raise DataError(f"{split.source} holds preference rows, which only DPO trains on (set dpo, or method "
                        "type 'dpo'); supervised fine-tuning needs chat, prompt/completion, Alpaca or text rows",
                        field=setting)


def _prepare_pairs(train: _Split, validation: _Split | None, tokenizer: Any, *, template: str,
                   report: dict[str, Any], max_seq_len: int) -> PreparedData:
    """Both sides of every preference row tokenised as SFT rows are; never packed."""
    report["validation"] = None
    sets = {}
    for split in (train, validation):
        if split is None:
            continue
        options = {"tokenizer": tokenizer, "template": template, "train_on_inputs": False, "max_seq_len": max_seq_len}
        chosen, split_report_ = _tokenize_split(split, **options)
        other = _Split(split.name, split.source, split.format, split.unit, rejected_examples(split.examples))
        rejected, other_report = _tokenize_split(other, **options)
        items, lost = pair_up(chosen, rejected, {row["line"]: row["reason"] for row in other_report["dropped"]})
        if not items:
            raise DatasetFormatError([ValidationIssue(row.line, row.reason, unit=split.unit) for row in lost],
                                     source=f"{split.source} ({split.name}: no usable pairs)")
        split_report_["pairs"] = len(items)
        split_report_["dropped_rows"] += len(lost)
        split_report_["dropped"] += [{"line": row.line, "reason": row.reason} for row in lost]
        report[split.name], sets[split.name] = split_report_, TokenizedDataset(items)
        if split is train:
            report["example"] = rendered_example(chosen[0], tokenizer)
    return _prepared(report, sets["train"], sets.get("validation"), PreferenceCollator(tokenizer.pad_token_id),
                     validation)


def _prepare_prompts(train: _Split, validation: _Split | None, tokenizer: Any, *, template: str,
                     report: dict[str, Any], max_seq_len: int) -> PreparedData:
    """Every prompts row's prompt tokenised with the generation prompt; never packed."""
    report["validation"] = None
    sets = {}
    for split in (train, validation):
        if split is None:
            continue
        items, dropped = tokenize_prompts(split.examples, tokenizer, template=template, max_seq_len=max_seq_len)
        if not items:
            raise DatasetFormatError([ValidationIssue(row.line, row.reason, unit=split.unit) for row in dropped],
                                     source=f"{split.source} ({split.name}: no usable prompts)")
        lengths = [len(item["input_ids"]) for item in items]
        report[split.name] = {
            "source": split.source, "format": split.format, "unit": split.unit, "rows": len(split.examples),
            "examples": len(items), "tokens": sum(lengths), "trainable_tokens": 0, "max_tokens": max(lengths),
            "mean_tokens": round(sum(lengths) / len(lengths), 2), "truncated_rows": 0, "dropped_rows": len(dropped),
            "dropped": [{"line": row.line, "reason": row.reason} for row in dropped[:MAX_LISTED_DROPS]],
            "mask_methods": {}, "packed_blocks": None}
        sets[split.name] = TokenizedDataset(items)
    return _prepared(report, sets["train"], sets.get("validation"), PromptCollator(), validation,
                     train_examples=list(train.examples))


def _read_splits(
    train_path: str | os.PathLike[str],
    validation_path: str | os.PathLike[str] | None,
    validation_split: float,
    seed: int,
) -> tuple[_Split, _Split | None]:
    """Validate the files (all problems raised before any tokenisation) and split if asked."""
    examples, result = read_examples(train_path)
    train = _Split("train", os.fspath(train_path), result.format, result.unit, examples)
    if validation_path is not None:
        examples, result = read_examples(validation_path)
        return train, _Split("validation", os.fspath(validation_path), result.format, result.unit, examples)
    if not validation_split:
        return train, None
    train.examples, held_out = split_examples(train.examples, fraction=validation_split, seed=seed)
    source = f"{validation_split:g} of {train.source} (seed {seed})"
    return train, _Split("validation", source, train.format, train.unit, held_out)


def _tokenize_split(
    split: _Split, tokenizer: Any, *, template: str, train_on_inputs: bool, max_seq_len: int
) -> tuple[list[TokenizedExample], dict[str, Any]]:
    rendered, dropped = _render_all(split.examples, tokenizer, template=template, train_on_inputs=train_on_inputs)
    try:
        tokenized, more_dropped = tokenize_examples(rendered, tokenizer, max_seq_len=max_seq_len)
    except TokenizerError as failure:  # the data's doing: the same on every attempt
        issues = [ValidationIssue(row.line, row.reason, unit=split.unit) for row in failure.rows]
        raise DatasetFormatError(issues, source=f"{split.source} ({split.name})") from failure
    dropped = sorted(dropped + more_dropped, key=lambda row: row.line)
    if not tokenized:
        issues = [ValidationIssue(row.line, row.reason, unit=split.unit) for row in dropped]
        raise DatasetFormatError(issues, source=f"{split.source} ({split.name}: no usable rows)")
    report = split_report(
        source=split.source,
        format=split.format,
        unit=split.unit,
        rows=len(split.examples),
        examples=tokenized,
        dropped=dropped,
        mask_methods=Counter(row.method for row in rendered),
    )
    return tokenized, report


def _render_all(
    examples: Sequence[Example], tokenizer: Any, *, template: str, train_on_inputs: bool
) -> tuple[list[RenderedExample], list[DroppedRow]]:
    rendered, dropped = [], []
    for example in examples:
        try:
            rendered.append(render_example(example, tokenizer, template=template, train_on_inputs=train_on_inputs))
        except RenderError as error:
            dropped.append(DroppedRow(example.line, str(error)))
    return rendered, dropped


def _items(examples: Sequence[TokenizedExample]) -> list[dict[str, list[int]]]:
    return [{"input_ids": example.input_ids, "labels": example.labels} for example in examples]
