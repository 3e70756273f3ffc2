"""Eval data files (purpose `evals`): JSONL, one row a line, `{"item": {...}, "sample": {...}?}` (OpenAI's
shape) or the item object itself. Read here line by line, with line numbers, at upload (the shape)
and when a run names the file (each item against its eval's item_schema, api/services/evals.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

EVAL_PURPOSE = "evals"
EVAL_FORMAT = "eval"  # files.format of an eval data file


class EvalRowError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


def rows(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
    """(line number, item, sample or None) of each non-blank line; EvalRowError at the first bad one."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise EvalRowError(number, f"not a JSON object ({str(error)[:120]})") from None
        if not isinstance(row, dict):
            raise EvalRowError(number, "not a JSON object")
        if "item" in row:
            item, sample = row["item"], row.get("sample")
            if not isinstance(item, dict):
                raise EvalRowError(number, "'item' must be an object")
            if sample is not None and not isinstance(sample, dict):
                raise EvalRowError(number, "'sample' must be an object")
            yield number, item, sample
        else:
            yield number, row, None


def lines_of(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream read in chunks (storage.open_range)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split(b"\n")
        yield from complete
    if rest:
        yield rest


def check_upload(path: str, *, max_rows: int) -> int:
    """The row count of an uploaded eval file; EvalRowError naming the first bad line or the bound."""
    count = 0
    with open(path, "rb") as handle:
        for number, _, _ in rows(handle):
            count += 1
            if count > max_rows:
                raise EvalRowError(number, f"more than {max_rows} rows (DORA_MAX_EVAL_ITEMS)")
    if count == 0:
        raise EvalRowError(1, "the file holds no rows")
    return count
