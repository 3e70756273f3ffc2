"""Reading dataset files of any container (JSONL, CSV/TSV, Parquet) into validated Examples.

JSONL goes through `dora_formats` (streaming, line numbers). CSV and Parquet are streamed
through `datasets` and their rows checked by the same `RowValidator`, so the column
conventions and messages are the same as JSONL's; their problems are located by data row
("row 1" is the first row after a CSV header). A CSV cannot carry chat `messages` (a nested
list), so a `messages` column there is rejected with a pointer to JSONL or Parquet.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dora_formats import (
    DEFAULT_MAX_ERRORS,
    DatasetFormatError,
    Example,
    RowValidator,
    ValidationIssue,
    ValidationResult,
    iter_jsonl_examples,
)

JSONL, CSV, TSV, PARQUET = "jsonl", "csv", "tsv", "parquet"
_SUFFIXES = {".jsonl": JSONL, ".json": JSONL, ".ndjson": JSONL, ".csv": CSV, ".tsv": TSV, ".parquet": PARQUET}
_PARQUET_MAGIC = b"PAR1"


def detect_container(path: str | os.PathLike[str]) -> str:
    """The file's container, by suffix; files without a known suffix (stored uploads) are sniffed:
    Parquet by its magic bytes, anything else is read as JSONL."""
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    with open(path, "rb") as stream:
        return PARQUET if stream.read(4) == _PARQUET_MAGIC else JSONL


def read_examples(
    path: str | os.PathLike[str], *, max_errors: int = DEFAULT_MAX_ERRORS
) -> tuple[list[Example], ValidationResult]:
    """Every row of a dataset file as an Example; raises DatasetFormatError listing all problems."""
    if not Path(path).is_file():
        raise DatasetFormatError([ValidationIssue(None, f"dataset file not found: {os.fspath(path)}")])
    container = detect_container(path)
    validator = RowValidator(max_errors=max_errors, unit="line" if container == JSONL else "row")
    if container == JSONL:
        examples = list(iter_jsonl_examples(path, validator))
    else:
        examples = [
            example
            for index, row in enumerate(_iter_table_rows(path, container), start=1)
            if (example := validator.feed(index, row)) is not None
        ]
    result = validator.result()
    result.raise_for_errors(source=os.fspath(path))
    return examples, result


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a dataset file, for the run manifest (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _iter_table_rows(path: str | os.PathLike[str], container: str) -> Iterator[dict[str, Any]]:
    """Rows of a CSV/TSV/Parquet file as dicts, streamed (no Arrow cache is written)."""
    from datasets import load_dataset

    builder, options = (PARQUET, {}) if container == PARQUET else (CSV, {"sep": "\t" if container == TSV else ","})
    dataset = load_dataset(builder, data_files=os.fspath(path), split="train", streaming=True, **options)
    rows = iter(dataset)
    try:
        first = next(rows, None)
    except Exception as error:  # pandas/pyarrow parse errors come in many types
        raise _unreadable(path, container, error) from error
    if first is None:
        return
    if container != PARQUET and "messages" in first:
        raise DatasetFormatError(
            [ValidationIssue(None, "a 'messages' column is not supported in CSV; use JSONL or Parquet for chat data")],
            source=os.fspath(path),
        )
    yield first
    try:
        yield from rows
    except Exception as error:
        raise _unreadable(path, container, error) from error


def _unreadable(path: str | os.PathLike[str], container: str, error: Exception) -> DatasetFormatError:
    message = f"cannot read the file as {container.upper()}: {type(error).__name__}: {error}"
    return DatasetFormatError([ValidationIssue(None, message)], source=os.fspath(path))
