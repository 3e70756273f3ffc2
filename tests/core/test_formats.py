"""dora_formats: format detection, validation messages with line numbers, streaming, normalisation."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dora_formats import (
    DatasetFormatError,
    Segment,
    read_jsonl_examples,
    validate_jsonl,
)


def jsonl(*rows: object) -> bytes:
    """Rows as JSONL bytes; str rows are written verbatim (for broken lines)."""
    return "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows).encode() + b"\n"


def problems(data: bytes, **options) -> list[tuple[int | None, str | None]]:
    result = validate_jsonl(io.BytesIO(data), **options)
    return [(issue.line, issue.field) for issue in result.errors]


def chat(*messages: dict) -> dict:
    return {"messages": list(messages)}


USER = {"role": "user", "content": "Hi"}
ANSWER = {"role": "assistant", "content": "Hello"}


def test_package_stays_free_of_torch_and_transformers():
    code = (
        "import sys, dora_formats; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("row", "fmt", "segments"),
    [
        (
            chat({"role": "system", "content": "Be brief."}, USER, {**ANSWER, "weight": 0}, USER, ANSWER),
            "chat",
            [
                Segment("system", "Be brief.", False),
                Segment("user", "Hi", False),
                Segment("assistant", "Hello", False),
                Segment("user", "Hi", False),
                Segment("assistant", "Hello", True),
            ],
        ),
        (
            {"prompt": "2+2=", "completion": "4"},
            "prompt_completion",
            [Segment("user", "2+2=", False), Segment("assistant", "4", True)],
        ),
        (
            {"instruction": "Add.", "input": "2 2", "output": "4"},
            "alpaca",
            [Segment("user", "Add.\n\n2 2", False), Segment("assistant", "4", True)],
        ),
        (
            {"instruction": "Greet.", "input": "", "output": "Hi"},
            "alpaca",
            [Segment("user", "Greet.", False), Segment("assistant", "Hi", True)],
        ),
        (
            {"instruction": "Greet.", "output": "Hi", "text": "ignored"},
            "alpaca",
            [Segment("user", "Greet.", False), Segment("assistant", "Hi", True)],
        ),
        ({"text": "Once upon a time."}, "text", [Segment("text", "Once upon a time.", True)]),
    ],
)
def test_each_format_is_detected_and_normalised(row, fmt, segments):
    examples, result = read_jsonl_examples(io.BytesIO(jsonl(row, row)))
    assert result.is_valid and result.format == fmt and result.rows == 2
    assert [example.line for example in examples] == [1, 2]
    assert list(examples[0].segments) == segments


def test_every_problem_is_reported_with_its_line_and_field():
    data = jsonl(
        chat(USER, ANSWER),  # 1 ok, sets the format
        "",  # 2 blank: skipped
        "{not json",  # 3
        [1, 2],  # 4
        chat(USER, {"role": "tool", "content": "x"}, ANSWER),  # 5
        chat(USER, {"role": "assistant", "content": ""}),  # 6
        chat({"role": "user", "content": 7}, ANSWER),  # 7
        chat({**USER, "weight": 1}, ANSWER),  # 8
        chat(USER, {**ANSWER, "weight": 2}),  # 9
        chat(USER, {**ANSWER, "weight": 0}),  # 10
        chat(USER, {"role": "assistant", "tool_calls": [{"id": "1"}]}),  # 11
        {"prompt": "a", "completion": "b"},  # 12
        {"foo": 1},  # 13
        {"messages": "hello"},  # 14
        {"messages": []},  # 15
        chat({"content": "no role"}, ANSWER),  # 16
        chat("just a string", ANSWER),  # 17
    )
    result = validate_jsonl(io.BytesIO(data))
    found = [(issue.line, issue.field) for issue in result.errors]
    assert found == [
        (3, None),
        (4, None),
        (5, "messages[1].role"),
        (6, "messages[1].content"),
        (7, "messages[0].content"),
        (8, "messages[0].weight"),
        (9, "messages[1].weight"),
        (10, "messages"),
        (11, "messages[1].content"),
        (12, None),
        (13, None),
        (14, "messages"),
        (15, "messages"),
        (16, "messages[0].role"),
        (17, "messages[0]"),
    ]
    text = [str(issue) for issue in result.errors]
    assert text[0].startswith("line 3: invalid JSON")
    assert "expected a JSON object, got array" in text[1]
    assert "'tool' is not supported (allowed: system, user, assistant)" in text[2]
    assert "is empty" in text[3]
    assert "must be a string, got number" in text[4]
    assert "only allowed on assistant messages" in text[5]
    assert "must be 0 or 1, got 2" in text[6]
    assert "no assistant message to train on" in text[7]
    assert "tool_calls" in text[8]
    assert "prompt_completion format but the file is in chat format (set by line 1)" in text[9]
    assert "none of the dataset fields" in text[10] and "'foo'" in text[10]
    assert result.rows == 16 and result.blank_lines == 1 and not result.is_valid


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"prompt": "a"}, "completion", "missing field 'completion'"),
        ({"prompt": "  ", "completion": "b"}, "prompt", "field 'prompt' is empty"),
        ({"prompt": "a", "completion": None}, "completion", "must be a string, got null"),
        ({"instruction": "a", "input": 3, "output": "b"}, "input", "field 'input' must be a string, got number"),
        ({"output": "b"}, "instruction", "missing field 'instruction'"),
        ({"text": ["a"]}, "text", "must be a string, got array"),
        ({"text": ""}, "text", "field 'text' is empty"),
    ],
)
def test_field_problems_of_the_simple_formats(row, field, message):
    result = validate_jsonl(io.BytesIO(jsonl(row)))
    assert [(issue.line, issue.field) for issue in result.errors] == [(1, field)]
    assert message in result.errors[0].message


def test_format_comes_from_the_first_recognisable_row():
    data = jsonl({"foo": 1}, {"prompt": "a"}, {"text": "x"}, {"prompt": "a", "completion": "b"})
    result = validate_jsonl(io.BytesIO(data))
    assert result.format == "prompt_completion"
    assert problems(data) == [(1, None), (2, "completion"), (3, None)]
    assert "(set by line 2)" in result.errors[2].message


@pytest.mark.parametrize("data", [b"", b"\n  \n\t\n"])
def test_empty_file_is_an_error(data):
    result = validate_jsonl(io.BytesIO(data))
    assert not result.is_valid and result.rows == 0 and result.format is None
    assert [str(issue) for issue in result.errors] == ["file: file is empty (no rows)"]


def test_errors_are_capped_but_all_counted():
    result = validate_jsonl(io.BytesIO(jsonl(*["oops"] * 120)), max_errors=50)
    assert result.error_count == 120 and len(result.errors) == 50
    assert result.errors[-1].line == 50
    assert result.to_dict()["errors_truncated"] is True


def test_bom_crlf_and_invalid_utf8():
    data = (
        b"\xef\xbb\xbf" + json.dumps({"text": "a"}).encode() + b"\r\n" + b'{"text": "\xff"}\r\n' + b'{"text": "b"}\r\n'
    )
    result = validate_jsonl(io.BytesIO(data))
    assert result.format == "text" and result.rows == 3
    assert [(issue.line, issue.message) for issue in result.errors] == [
        (2, "not valid UTF-8 (byte 0xff at position 10)")
    ]


def test_over_long_line_is_reported_and_skipped_without_breaking_the_next_lines():
    data = jsonl({"text": "a"}, {"text": "x" * 5000}, {"text": "b"}, "oops")
    result = validate_jsonl(io.BytesIO(data), max_line_bytes=100)
    assert [(issue.line, issue.message) for issue in result.errors] == [
        (2, "line is longer than 100 bytes"),
        (4, "invalid JSON: Expecting value (column 1)"),
    ]
    assert result.rows == 4


def test_a_truncated_line_is_reported_at_its_real_column_and_said_to_look_truncated():
    """With the line's newline, json put the error on "line 2, column 1" of the row: reported as column 1."""
    row = json.dumps(chat(USER, ANSWER))
    cut_after_a_value, cut_in_a_string = row[:-2], row[:row.index("Hello") + 3]
    with pytest.raises(json.JSONDecodeError) as after_value:
        json.loads(cut_after_a_value)
    with pytest.raises(json.JSONDecodeError) as in_string:
        json.loads(cut_in_a_string)
    result = validate_jsonl(io.BytesIO(jsonl(row, cut_after_a_value, cut_in_a_string, '{"text": x}', row[:-2])))
    assert [(issue.line, issue.message) for issue in result.errors] == [
        (2, f"invalid JSON: Expecting ',' delimiter (column {after_value.value.colno}): unexpected end of the line; "
            "it looks truncated"),
        (3, f"invalid JSON: Unterminated string starting at column {in_string.value.colno}: the line ends inside "
            "this string, so it looks truncated (unexpected end of the line)"),
        (4, "invalid JSON: Expecting value (column 10)"),
        (5, f"invalid JSON: Expecting ',' delimiter (column {after_value.value.colno}): unexpected end of the line; "
            "it looks truncated"),
    ]
    assert after_value.value.colno == len(cut_after_a_value) + 1 > 1


def test_nesting_past_the_bound_is_a_line_error_not_a_recursion_error():
    """100,000 nested arrays made json.loads raise RecursionError, which escaped validation (a 500)."""
    from dora_formats import MAX_JSON_DEPTH

    deep = '{"text": "t", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    past = '{"text": "t", "x": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"  # the row is one more level
    within = '{"text": "t", "x": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}"
    result = validate_jsonl(io.BytesIO(jsonl({"text": "a"}, deep, past, within)))
    message = f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
    assert [(issue.line, issue.message) for issue in result.errors] == [(2, message), (3, message)]
    assert result.errors[1].field == "x" + "[0]" * (MAX_JSON_DEPTH - 1)
    assert result.rows == 4


def test_lone_surrogates_are_refused_with_line_and_field(tmp_path: Path):
    """`\\ud800` is valid JSON but not text any tokenizer (or UTF-8) can hold: the job failed 3 times."""
    data = jsonl({"text": "fine"}, r'{"text": "a\ud800b"}', r'{"text": "ok", "extra": {"k\udc80": 1}}',
                 r'{"text": "\ud83d\ude00 a pair is fine"}')
    result = validate_jsonl(io.BytesIO(data))
    assert [(issue.line, issue.field, issue.message) for issue in result.errors] == [
        (2, "text", "field 'text' contains a lone surrogate (\\ud800), which is not valid Unicode text"),
        (3, "extra.k\\udc80",
         "key 'extra.k\\udc80' contains a lone surrogate (\\udc80), which is not valid Unicode text"),
    ]
    chat_data = jsonl(chat(USER, ANSWER), r'{"messages": [{"role": "user", "content": "hi"}, '
                                          r'{"role": "assistant", "content": "\udfff"}]}')
    assert [(issue.line, issue.field) for issue in validate_jsonl(io.BytesIO(chat_data)).errors] == [
        (2, "messages[1].content")]
    path = tmp_path / "surrogate.jsonl"
    path.write_bytes(data)
    with pytest.raises(DatasetFormatError, match="line 2: field 'text' contains a lone surrogate"):
        read_jsonl_examples(path)


def test_dora_core_loading_applies_the_same_checks(tmp_path: Path):
    """The worker reads datasets through dora_core.data.read_examples: same bound, same messages."""
    pytest.importorskip("torch")
    from dora_core.data import read_examples

    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl({"text": "a"}, "[" * 100_000 + "]" * 100_000, r'{"text": "a\ud800b"}'))
    with pytest.raises(DatasetFormatError) as caught:
        read_examples(path)
    assert [(issue.line, issue.message.split(",")[0]) for issue in caught.value.errors] == [
        (2, "JSON nested more than 64 levels deep"), (3, "field 'text' contains a lone surrogate (\\ud800)")]


class ReadlineOnly:
    """A file object offering nothing but readline(size): proves validation streams line by line."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)
        self.largest_request = 0

    def readline(self, size: int = -1) -> bytes:
        self.largest_request = max(self.largest_request, size)
        return self._stream.readline(size)


def test_validation_streams_a_file_object_line_by_line():
    stream = ReadlineOnly(jsonl(*({"prompt": f"q{i}", "completion": f"a{i}"} for i in range(2000))))
    result = validate_jsonl(stream, max_line_bytes=1024)
    assert result.is_valid and result.rows == 2000
    assert stream.largest_request == 1025


def test_paths_and_text_mode_files_are_accepted(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(jsonl({"text": "héllo"}, "", {"text": "wörld"}))
    assert validate_jsonl(path).rows == 2
    assert validate_jsonl(str(path)).blank_lines == 1
    with open(path, encoding="utf-8") as stream:
        examples, _ = read_jsonl_examples(stream)
    assert [(example.line, example.segments[0].content) for example in examples] == [(1, "héllo"), (3, "wörld")]


def test_read_raises_dataset_format_error_with_all_problems(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl({"text": "ok"}, "nope", {"text": ""}))
    with pytest.raises(DatasetFormatError) as caught:
        read_jsonl_examples(path)
    error = caught.value
    assert [issue.line for issue in error.errors] == [2, 3] and error.error_count == 2
    assert str(path) in str(error) and "line 2: invalid JSON" in str(error) and "line 3:" in str(error)


def test_result_serialises_to_json():
    result = validate_jsonl(io.BytesIO(jsonl({"text": "a"}, "[]")))
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["is_valid"] is False and payload["format"] == "text" and payload["unit"] == "line"
    assert payload["errors"] == [
        {"line": 2, "message": "expected a JSON object, got array", "field": None, "unit": "line"}
    ]
