"""dora_core.data on the tiny tokenizer: loss masks, templates, truncation, packing, splits, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dora_core.data import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    DataCollator,
    DatasetFormatError,
    prepare_datasets,
    read_examples,
    render_example,
    tokenize_examples,
)
from dora_core.model_loading import load_base_model, load_tokenizer
from tests.support.numerics import assert_close_to_reference, float64_model, model_budget

END = "<|end|>"


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False)


def trained_runs(tokenizer, item: dict) -> list[str]:
    """The decoded runs of consecutive trained tokens of one example."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in item["labels"]:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return [decode(tokenizer, run) for run in runs]


@pytest.fixture
def plain_tokenizer(tiny_model_dir):
    """The tiny tokenizer with its chat template removed, so the default template is used."""
    tokenizer = load_tokenizer(tiny_model_dir, local_files_only=True)
    tokenizer.chat_template = None
    return tokenizer


QA = [
    {"prompt": "What is the capital of France?", "completion": "Paris is the capital."},
    {"prompt": "Add 12 and 30.", "completion": "The answer is 42."},
    {"prompt": "Say hello.", "completion": "Hello!"},
]


def test_prompt_completion_labels_are_exactly_the_completion(tmp_path, tiny_tokenizer):
    data = prepare_datasets(write_jsonl(tmp_path / "qa.jsonl", QA), tiny_tokenizer, max_seq_len=128)
    assert len(data.train) == 3
    for row, item in zip(QA, data.train, strict=True):
        assert trained_runs(tiny_tokenizer, item) == [row["completion"] + END]
        expected = f"<s><|user|>\n{row['prompt']}{END}\n<|assistant|>\n{row['completion']}{END}"
        assert decode(tiny_tokenizer, item["input_ids"]) == expected
        assert len(item["labels"]) == len(item["input_ids"])


def test_chat_trains_every_assistant_turn_except_weight_zero(tmp_path, tiny_tokenizer):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Lyon.", "weight": 0},
                {"role": "user", "content": "Wrong. Again?"},
                {"role": "assistant", "content": "Paris."},
            ]
        },
    ]
    data = prepare_datasets(write_jsonl(tmp_path / "chat.jsonl", rows), tiny_tokenizer, max_seq_len=256)
    assert trained_runs(tiny_tokenizer, data.train[0]) == ["Paris." + END, "Rome." + END]
    assert trained_runs(tiny_tokenizer, data.train[1]) == ["Paris." + END]
    assert data.report["train"]["mask_methods"] == {"incremental": 2}


def test_alpaca_joins_instruction_and_input(tmp_path, tiny_tokenizer):
    rows = [
        {"instruction": "Add the numbers.", "input": "12 30", "output": "42"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
    ]
    data = prepare_datasets(write_jsonl(tmp_path / "alpaca.jsonl", rows), tiny_tokenizer, max_seq_len=128)
    first, second = (decode(tiny_tokenizer, item["input_ids"]) for item in data.train)
    assert "<|user|>\nAdd the numbers.\n\n12 30<|end|>" in first
    assert "<|user|>\nName a colour.<|end|>" in second
    assert [trained_runs(tiny_tokenizer, item) for item in data.train] == [["42" + END], ["Blue" + END]]


def test_plain_text_trains_every_token(tmp_path, tiny_tokenizer):
    rows = [{"text": "Once upon a time there was a small village."}, {"text": "The sea is blue."}]
    data = prepare_datasets(write_jsonl(tmp_path / "text.jsonl", rows), tiny_tokenizer, max_seq_len=128)
    for row, item in zip(rows, data.train, strict=True):
        assert item["labels"] == item["input_ids"]
        assert decode(tiny_tokenizer, item["input_ids"]) == f"<s>{row['text']}</s>"


def test_train_on_inputs_trains_everything_but_weight_zero_turns(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", QA)
    data = prepare_datasets(path, tiny_tokenizer, max_seq_len=128, train_on_inputs=True)
    assert all(item["labels"] == item["input_ids"] for item in data.train)
    chat = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Go away.", "weight": 0},
            {"role": "user", "content": "Hi again"},
            {"role": "assistant", "content": "Hello!"},
        ]
    }
    data = prepare_datasets(
        write_jsonl(tmp_path / "c.jsonl", [chat]), tiny_tokenizer, max_seq_len=128, train_on_inputs=True
    )
    runs = trained_runs(tiny_tokenizer, data.train[0])
    assert runs == [
        "<s><|user|>\nHi<|end|>\n<|assistant|>\n",
        "\n<|user|>\nHi again<|end|>\n<|assistant|>\nHello!<|end|>",
    ]


def test_default_template_when_the_tokenizer_has_none(tmp_path, plain_tokenizer):
    data = prepare_datasets(write_jsonl(tmp_path / "qa.jsonl", QA[:1]), plain_tokenizer, max_seq_len=128)
    item = data.train[0]
    text = decode(plain_tokenizer, item["input_ids"])
    assert text == "<s><|user|>\nWhat is the capital of France?</s>\n<|assistant|>\nParis is the capital.</s>"
    assert trained_runs(plain_tokenizer, item) == ["Paris is the capital.</s>"]
    assert data.report["template"] == "default"
    assert "<|assistant|>" in DEFAULT_CHAT_TEMPLATE


def test_template_refusing_partial_chats_falls_back_to_content_search(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, local_files_only=True)
    tokenizer.chat_template = (
        "{% if messages[-1]['role'] != 'assistant' %}{{ raise_exception('must end with assistant') }}{% endif %}"
        + tokenizer.chat_template
    )
    data = prepare_datasets(write_jsonl(tmp_path / "qa.jsonl", QA[:2]), tokenizer, max_seq_len=128)
    assert [trained_runs(tokenizer, item) for item in data.train] == [[row["completion"] + END] for row in QA[:2]]
    assert data.report["train"]["mask_methods"] == {"content_search": 2}
    assert any("content search" in warning for warning in data.report["warnings"])


def test_rows_the_template_rejects_are_dropped_with_line_numbers(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, local_files_only=True)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{% endfor %}" + tokenizer.chat_template
    )
    with_system = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
    }
    without = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [without, with_system, without])
    data = prepare_datasets(path, tokenizer, max_seq_len=64)
    assert len(data.train) == 2
    assert data.report["train"]["dropped"] == [{"line": 2, "reason": "chat template failed: no system role"}]
    assert data.report["warnings"][0].startswith("train: 1 row(s) dropped (line 2: chat template failed")
    with pytest.raises(DatasetFormatError) as caught:
        prepare_datasets(write_jsonl(tmp_path / "all.jsonl", [with_system, with_system]), tokenizer, max_seq_len=64)
    assert [issue.line for issue in caught.value.errors] == [1, 2]


def test_truncation_is_counted_and_rows_with_nothing_left_to_learn_are_dropped(tmp_path, tiny_tokenizer):
    long_prompt = "word " * 40
    rows = [
        {"prompt": "Hi", "completion": "Hello " * 30},  # 1: truncated, keeps part of the completion
        {"prompt": long_prompt, "completion": "late"},  # 2: completion cut off entirely -> dropped
        {"prompt": "Hi", "completion": "Yo"},  # 3: fits
    ]
    data = prepare_datasets(write_jsonl(tmp_path / "t.jsonl", rows), tiny_tokenizer, max_seq_len=16)
    report = data.report["train"]
    assert report["truncated_rows"] == 1 and report["examples"] == 2 and report["dropped_rows"] == 1
    assert report["dropped"][0]["line"] == 2
    assert report["dropped"][0]["reason"].startswith("no trainable tokens within max_seq_len=16")
    assert all(len(item["input_ids"]) <= 16 for item in data.train)
    assert len(data.train[0]["input_ids"]) == 16 and report["max_tokens"] == 16
    assert trained_runs(tiny_tokenizer, data.train[0])[0].startswith("Hello Hello")
    with pytest.raises(DatasetFormatError) as caught:
        prepare_datasets(write_jsonl(tmp_path / "u.jsonl", rows[1:2]), tiny_tokenizer, max_seq_len=16)
    assert caught.value.errors[0].line == 1 and "max_seq_len=16" in str(caught.value)


class ExplodingTokenizer:
    """Any use fails: shows that validation happens before tokenisation."""

    def __getattr__(self, name):
        raise AssertionError(f"tokenizer used before validation finished ({name})")


def test_malformed_files_fail_before_any_tokenisation(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, "{broken", {"prompt": "c"}])
    with pytest.raises(DatasetFormatError) as caught:
        prepare_datasets(path, ExplodingTokenizer(), max_seq_len=32)
    assert [(issue.line, issue.field) for issue in caught.value.errors] == [(2, None), (3, "completion")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetFormatError, match="file is empty"):
        prepare_datasets(empty, ExplodingTokenizer(), max_seq_len=32)
    valid = write_jsonl(tmp_path / "ok.jsonl", QA)
    with pytest.raises(DatasetFormatError, match="line 1: field 'text' is empty"):
        prepare_datasets(
            valid,
            ExplodingTokenizer(),
            max_seq_len=32,
            validation_path=write_jsonl(tmp_path / "v.jsonl", [{"text": ""}]),
        )


def test_packing_fills_blocks_and_restarts_positions(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"Question number {i}?", "completion": f"Answer {i}."} for i in range(12)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    plain = prepare_datasets(path, tiny_tokenizer, max_seq_len=64)
    packed = prepare_datasets(path, tiny_tokenizer, max_seq_len=64, packing=True)
    lengths = [len(item["input_ids"]) for item in plain.train]
    assert len(packed.train) < len(plain.train) and packed.report["train"]["packed_blocks"] == len(packed.train)
    assert all(len(block["input_ids"]) <= 64 for block in packed.train)
    assert sum(len(block["input_ids"]) for block in packed.train) == sum(lengths)
    # position ids restart at 0 for each example; their first label is masked
    starts = [(b, i) for b, block in enumerate(packed.train) for i, p in enumerate(block["position_ids"]) if p == 0]
    assert len(starts) == 12
    assert all(packed.train[b]["labels"][i] == IGNORE_INDEX for b, i in starts)
    flat_ids = [token for block in packed.train for token in block["input_ids"]]
    assert flat_ids == [token for item in plain.train for token in item["input_ids"]]
    flat_labels = [label for block in packed.train for label in block["labels"]]
    assert flat_labels == [label for item in plain.train for label in item["labels"]]  # chat rows start untrained
    batch = packed.collator([packed.train[0], packed.train[-1]])
    width = max(len(packed.train[0]["input_ids"]), len(packed.train[-1]["input_ids"]))
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: packed-sequence masking
    assert batch["input_ids"].shape == (2, width) and batch["position_ids"].shape == (2, width)
    tail = len(packed.train[-1]["input_ids"])
    assert (batch["labels"][1, tail:] == IGNORE_INDEX).all() and (
        batch["input_ids"][1, tail:] == tiny_tokenizer.pad_token_id
    ).all()
    assert packed.report["validation"] is None and packed.report["packing"] is True


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir, tiny_tokenizer):
    """With position_ids restarting and no attention mask (use_cache=False), the second packed
    example gets the same logits as on its own: the block-diagonal mask is in effect. In float64:
    the same math on two paths (packed-sequence masking vs none), so float64's budget; a leak
    across examples is an O(1) change."""
    model = float64_model(load_base_model(tiny_model_dir, local_files_only=True))
    first = tiny_tokenizer("The sea is blue.")["input_ids"]
    second = tiny_tokenizer("Paris is a city.")["input_ids"]
    collator = DataCollator(tiny_tokenizer.pad_token_id)
    block = {
        "input_ids": first + second,
        "labels": first + second,
        "position_ids": [*range(len(first)), *range(len(second))],
    }
    batch = collator([block])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([second])).logits
    assert_close_to_reference(packed[:, len(first) :], alone, model_budget(model, torch.float64), what="logits")


def test_collator_right_pads_inputs_labels_and_mask():
    collator = DataCollator(0, pad_to_multiple_of=4)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    packed = collator(
        [
            {"input_ids": [5, 6], "labels": [5, 6], "position_ids": [0, 1]},
            {"input_ids": [9], "labels": [9], "position_ids": [0]},
        ]
    )
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1], [0, 0, 1, 2]]
    assert "attention_mask" not in packed


def test_validation_split_is_deterministic_and_disjoint(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(20)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)

    def held_out(seed: int) -> list[str]:
        data = prepare_datasets(path, tiny_tokenizer, max_seq_len=64, validation_split=0.25, seed=seed)
        assert len(data.train) == 15 and len(data.validation) == 5
        train = {decode(tiny_tokenizer, item["input_ids"]) for item in data.train}
        validation = [decode(tiny_tokenizer, item["input_ids"]) for item in data.validation]
        assert train.isdisjoint(validation) and len(train | set(validation)) == 20
        return validation

    assert held_out(1) == held_out(1)
    assert held_out(1) != held_out(2)
    with pytest.raises(ValueError, match="leaves no training rows"):
        prepare_datasets(
            write_jsonl(tmp_path / "one.jsonl", rows[:1]), tiny_tokenizer, max_seq_len=64, validation_split=0.5
        )


def test_validation_from_a_file_is_never_packed(tmp_path, tiny_tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", QA)
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"text": "The sea is blue."}])
    data = prepare_datasets(train, tiny_tokenizer, max_seq_len=128, validation_path=valid, packing=True)
    assert len(data.validation) == 1 and "position_ids" not in data.validation[0]
    assert data.report["validation"]["source"] == str(valid) and data.report["validation"]["format"] == "text"
    assert data.report["validation_sha256"] and data.report["train_sha256"] != data.report["validation_sha256"]
    with pytest.raises(ValueError, match="not both"):
        prepare_datasets(train, tiny_tokenizer, max_seq_len=128, validation_path=valid, validation_split=0.1)


def test_report_is_json_and_shows_the_trained_part(tmp_path, tiny_tokenizer):
    data = prepare_datasets(
        write_jsonl(tmp_path / "qa.jsonl", QA), tiny_tokenizer, max_seq_len=128, validation_split=0.34
    )
    report = json.loads(json.dumps(data.report))
    train = report["train"]
    assert train["format"] == "prompt_completion" and train["rows"] == 2 and report["validation"]["rows"] == 1
    assert train["tokens"] == sum(len(item["input_ids"]) for item in data.train)
    assert train["trainable_tokens"] == sum(label != IGNORE_INDEX for item in data.train for label in item["labels"])
    assert train["truncated_rows"] == 0 and train["dropped_rows"] == 0 and report["template"] == "tokenizer"
    example = report["example"]
    row = next(r for r in QA if r["prompt"] in example["text"])
    assert example["marked_text"].endswith(f"<|assistant|>\n⟦{row['completion']}{END}⟧")
    assert example["marked_text"].count("⟦") == 1 and report["warnings"] == []


def test_csv_and_parquet_use_the_same_columns(tmp_path, tiny_tokenizer):
    csv_path = tmp_path / "alpaca.csv"
    csv_path.write_text('instruction,input,output\nAdd the numbers.,12 30,42\n"Name a colour, please.",,Blue\n')
    data = prepare_datasets(csv_path, tiny_tokenizer, max_seq_len=128)
    assert [trained_runs(tiny_tokenizer, item) for item in data.train] == [["42" + END], ["Blue" + END]]
    assert "<|user|>\nName a colour, please.<|end|>" in decode(tiny_tokenizer, data.train[1]["input_ids"])

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet_path = tmp_path / "chat.parquet"
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 1}]},
        {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)  # missing weights become nulls
    data = prepare_datasets(parquet_path, tiny_tokenizer, max_seq_len=64)
    assert [trained_runs(tiny_tokenizer, item) for item in data.train] == [["Hello" + END], ["See you" + END]]
    assert data.report["train"]["format"] == "chat"


def test_table_problems_are_located_by_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,completion\nHi,Hello\nNo answer,\n")
    with pytest.raises(DatasetFormatError) as caught:
        read_examples(bad)
    assert [str(issue) for issue in caught.value.errors] == ["row 2: field 'completion' must be a string, got null"]
    chat_csv = tmp_path / "chat.csv"
    chat_csv.write_text('messages\n"[{""role"": ""user""}]"\n')
    with pytest.raises(DatasetFormatError, match="'messages' column is not supported in CSV"):
        read_examples(chat_csv)


def test_files_without_a_known_suffix_are_sniffed(tmp_path):
    stored = tmp_path / "file-abc123"
    write_jsonl(stored, QA)
    examples, result = read_examples(stored)
    assert result.format == "prompt_completion" and len(examples) == 3
    with pytest.raises(DatasetFormatError, match="not found"):
        read_examples(tmp_path / "missing.jsonl")


class SlowTokenizer:
    """The tiny tokenizer seen as one without offsets (is_fast False)."""

    is_fast = False

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __call__(self, text, **options):
        return self._tokenizer(text, **options)


def test_tokenizers_without_offsets_are_tokenised_piecewise(tmp_path, tiny_tokenizer):
    examples, _ = read_examples(write_jsonl(tmp_path / "qa.jsonl", QA))
    template = tiny_tokenizer.get_chat_template()
    rendered = [render_example(example, tiny_tokenizer, template=template) for example in examples]
    fast, _ = tokenize_examples(rendered, tiny_tokenizer, max_seq_len=128)
    slow, _ = tokenize_examples(rendered, SlowTokenizer(tiny_tokenizer), max_seq_len=128)
    for a, b, row in zip(fast, slow, QA, strict=True):
        assert decode(tiny_tokenizer, [t for t in b.labels if t != IGNORE_INDEX]) == row["completion"] + END
        assert decode(tiny_tokenizer, b.input_ids) == decode(tiny_tokenizer, a.input_ids)
