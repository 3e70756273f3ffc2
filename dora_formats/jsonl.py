"""Streaming JSONL reading: validate or load a file without holding it in memory.

Accepts a path or an open file object (binary, as the API's upload object is, or text).
Lines are decoded as UTF-8 (a leading BOM is tolerated). Blank or whitespace-only lines are
allowed and skipped, but still counted, so reported line numbers match an editor's.
A line longer than `max_line_bytes` is reported and skipped without being read into memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from dora_formats.records import DEFAULT_MAX_ERRORS, MAX_JSON_DEPTH, Example, ValidationResult
from dora_formats.rules import LONE_SURROGATE, deep_or_not_text
from dora_formats.validate import RowValidator

Source = str | os.PathLike[str] | IO[bytes] | IO[str]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
_SKIP_CHUNK = 1024 * 1024


def validate_jsonl(
    source: Source, *, max_errors: int = DEFAULT_MAX_ERRORS, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> ValidationResult:
    """Check every row of a JSONL file; memory use is bounded by one line, whatever the file size."""
    validator = RowValidator(max_errors=max_errors)
    for _ in iter_jsonl_examples(source, validator, max_line_bytes=max_line_bytes):
        pass
    return validator.result()


def read_jsonl_examples(
    source: Source, *, max_errors: int = DEFAULT_MAX_ERRORS, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> tuple[list[Example], ValidationResult]:
    """All rows as normalised Examples; raises DatasetFormatError (with every problem) if any row is bad."""
    validator = RowValidator(max_errors=max_errors)
    examples = list(iter_jsonl_examples(source, validator, max_line_bytes=max_line_bytes))
    result = validator.result()
    result.raise_for_errors(source=_source_name(source))
    return examples, result


def iter_jsonl_examples(
    source: Source, validator: RowValidator, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Example]:
    """Yield the valid rows as Examples; problems go to `validator` (call `.result()` afterwards)."""
    with _open(source) as stream:
        for line_number, raw in _iter_raw_lines(stream, max_line_bytes):
            if raw is None:
                validator.feed_invalid(line_number, f"line is longer than {max_line_bytes} bytes")
                continue
            text, problem = _decode(raw, first=line_number == 1)
            if problem is not None:
                validator.feed_invalid(line_number, problem)
                continue
            if not text.strip():
                validator.skip_blank()
                continue
            row, problem = _parse(text)
            if problem is not None:
                validator.feed_invalid(line_number, problem)
                continue
            if _may_be_deep_or_not_text(text) and (found := deep_or_not_text(row)) is not None:
                validator.feed_invalid(line_number, found[1], field=found[0])
                continue
            example = validator.feed(line_number, row)
            if example is not None:
                yield example


def _parse(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, f"invalid JSON: {_json_problem(text, error)}"
    except RecursionError:  # ~1000 levels: far past the bound
        return None, f"JSON nested more than {MAX_JSON_DEPTH} levels deep"


def _json_problem(text: str, error: json.JSONDecodeError) -> str:
    """json's message and column for the row without its newline (with it, json put an error at
    the end of the row on the next line, "column 1", and a string cut off by the end of the line
    was an "invalid control character"), and whether the row ends before its JSON does, which is
    what a truncated line looks like."""
    row = text.rstrip("\r\n")
    try:
        json.loads(row)
    except json.JSONDecodeError as row_error:  # always: a newline is only whitespace to json
        error = row_error
    column = min(error.pos, len(row)) + 1
    where = f"{error.msg} column {column}" if error.msg.endswith(" at") else f"{error.msg} (column {column})"
    if error.msg.startswith("Unterminated string"):
        return f"{where}: the line ends inside this string, so it looks truncated (unexpected end of the line)"
    if error.pos >= len(row.rstrip()):
        return f"{where}: unexpected end of the line; it looks truncated"
    return where


def _may_be_deep_or_not_text(text: str) -> bool:
    """Whether a row needs `deep_or_not_text` (a cheap test, so most rows skip the walk): a lone
    surrogate comes from a `\\u` escape (or from a text-mode source), and nesting past the bound
    needs more brackets than that."""
    return ("\\u" in text or LONE_SURROGATE.search(text) is not None
            or text.count("[") + text.count("{") > MAX_JSON_DEPTH)


def _decode(raw: bytes | str, *, first: bool) -> tuple[str, str | None]:
    if isinstance(raw, str):
        return (raw.lstrip("\ufeff") if first else raw), None
    try:
        return raw.decode("utf-8-sig" if first else "utf-8"), None
    except UnicodeDecodeError as error:
        return "", f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at position {error.start})"


def _iter_raw_lines(stream: IO[Any], max_line_bytes: int) -> Iterator[tuple[int, bytes | str | None]]:
    """(1-based line number, line) pairs; the line is None when it exceeds `max_line_bytes`."""
    line_number = 0
    while True:
        chunk = stream.readline(max_line_bytes + 1)
        if not chunk:
            return
        line_number += 1
        newline = b"\n" if isinstance(chunk, bytes) else "\n"
        if len(chunk) > max_line_bytes and not chunk.endswith(newline):
            _skip_rest_of_line(stream, newline)
            yield line_number, None
        else:
            yield line_number, chunk


def _skip_rest_of_line(stream: IO[Any], newline: bytes | str) -> None:
    while True:
        rest = stream.readline(_SKIP_CHUNK)
        if not rest or rest.endswith(newline):
            return


@contextmanager
def _open(source: Source) -> Iterator[IO[Any]]:
    """Open a path for binary reading, or pass an open file object through (left open)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as stream:
            yield stream
    elif hasattr(source, "readline"):
        yield source
    else:
        raise TypeError(f"expected a path or a file object, got {type(source).__name__}")


def _source_name(source: Source) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None
