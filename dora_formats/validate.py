"""Validation of a stream of rows: one format per file, every problem with its line number.

The same `RowValidator` serves JSONL (fed line by line from `dora_formats.jsonl`) and tables
(CSV/Parquet rows fed by `dora_core.data.sources`), so all inputs get the same messages.
The file's format is that of the first row whose format can be recognised; a later row of
another format is an error naming both lines.
"""

from __future__ import annotations

from collections.abc import Mapping

from dora_formats.records import DEFAULT_MAX_ERRORS, Example, ValidationIssue, ValidationResult
from dora_formats.rules import check_row, detect_format, json_type, to_example, unrecognised_row_message


class RowValidator:
    """Accumulates the format, row count and problems of one file while its rows stream past."""

    def __init__(self, *, max_errors: int = DEFAULT_MAX_ERRORS, unit: str = "line") -> None:
        self.max_errors = max_errors
        self.unit = unit
        self.format: str | None = None
        self.format_line: int | None = None
        self.rows = 0
        self.blank_lines = 0
        self.errors: list[ValidationIssue] = []
        self.error_count = 0

    def add_error(self, line: int | None, message: str, *, field: str | None = None) -> None:
        """Record a problem; only the first `max_errors` are kept, all are counted."""
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(ValidationIssue(line=line, message=message, field=field, unit=self.unit))

    def skip_blank(self) -> None:
        self.blank_lines += 1

    def feed_invalid(self, line: int, message: str, *, field: str | None = None) -> None:
        """A row that could not even be parsed (bad JSON, bad encoding, over-long line), or
        not be read as data (nested too deep, a lone surrogate)."""
        self.rows += 1
        self.add_error(line, message, field=field)

    def feed(self, line: int, row: object) -> Example | None:
        """Check one parsed row; returns its normalised Example, or None if it has problems."""
        self.rows += 1
        if not isinstance(row, Mapping):
            self.add_error(line, f"expected a JSON object, got {json_type(row)}")
            return None
        fmt = detect_format(row)
        if fmt is None:
            self.add_error(line, unrecognised_row_message(row))
            return None
        if self.format is None:
            self.format, self.format_line = fmt, line
        elif fmt != self.format:
            self.add_error(
                line,
                f"row is in {fmt} format but the file is in {self.format} format "
                f"(set by {self.unit} {self.format_line}); one format per file",
            )
            return None
        problems = check_row(row, fmt)
        for field, message in problems:
            self.add_error(line, message, field=field)
        return None if problems else to_example(row, fmt, line=line)

    def result(self) -> ValidationResult:
        """The summary; a file without any row is itself an error."""
        if self.rows == 0 and self.error_count == 0:
            self.add_error(None, "file is empty (no rows)")
        return ValidationResult(
            format=self.format,
            rows=self.rows,
            blank_lines=self.blank_lines,
            errors=list(self.errors),
            error_count=self.error_count,
            max_errors=self.max_errors,
            unit=self.unit,
        )
