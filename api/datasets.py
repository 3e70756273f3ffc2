"""The one call the API makes to check an uploaded dataset: `validate_dataset(path)`.

It delegates to `dora_formats` (torch-free, streaming: memory bounded by one line), the same
rules the training run applies, so an upload that is accepted here will also load there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dora_formats import validate_jsonl

MAX_ERRORS = 20


@dataclass
class DatasetReport:
    format: str | None
    rows: int
    errors: list[dict] = field(default_factory=list)  # [{"line": 3 | None, "field": ..., "message": ...}]
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def validate_dataset(path: Path, *, max_errors: int = MAX_ERRORS) -> DatasetReport:
    """Format, row count and line-numbered problems of the JSONL dataset at `path`."""
    result = validate_jsonl(path, max_errors=max_errors)
    errors = [{"line": issue.line, "field": issue.field, "message": issue.message} for issue in result.errors]
    return DatasetReport(format=result.format, rows=result.rows, errors=errors, error_count=result.error_count)
