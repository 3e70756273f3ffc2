"""The shapes a dataset row is normalised into, and how problems with rows are reported.

Every format users upload (OpenAI chat, prompt/completion, Alpaca, plain text) becomes the
same `Example`: an ordered list of `(role, content, trainable)` segments. Tokenisation and
loss masking (in `dora_core.data`) then only need to understand one shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

CHAT = "chat"
PROMPT_COMPLETION = "prompt_completion"
ALPACA = "alpaca"
TEXT = "text"
PREFERENCE = "preference"  # OpenAI's DPO rows: input.messages, preferred_output, non_preferred_output
PROMPTS = "prompts"  # OpenAI's reinforcement rows: messages ending before the answer, plus the grader's fields
FORMATS = (CHAT, PROMPT_COMPLETION, ALPACA, TEXT, PREFERENCE, PROMPTS)
SFT_FORMATS = (CHAT, PROMPT_COMPLETION, ALPACA, TEXT)  # what a supervised run trains on

ROLES = ("system", "user", "assistant")
TEXT_ROLE = "text"  # the single segment of a plain-text row

DEFAULT_MAX_ERRORS = 50
# Levels of arrays and objects a JSONL row may nest, the row itself being level 1. Chat rows
# need 3 or 4; past the bound a row is an error (deeper still, Python's JSON reader raises
# RecursionError, which is reported the same way).
MAX_JSON_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of a row: a chat message, a prompt, a completion, or a whole text."""

    role: str  # "system" | "user" | "assistant" | "text"
    content: str
    trainable: bool  # whether loss is computed on it by default


@dataclass(frozen=True, slots=True)
class Example:
    """One dataset row, normalised. `line` is the 1-based line (JSONL) or row (CSV/Parquet).

    A preference row is two conversations with the same prompt: `segments` ends with the
    preferred answer (the one samples and SFT-style rendering see), `rejected` with the other."""

    line: int
    format: str
    segments: tuple[Segment, ...]
    rejected: tuple[Segment, ...] | None = None  # preference rows only: the prompt + the non-preferred answer
    item: Any = None  # prompts rows only: the whole row, the `item` a reinforcement grader's templates read


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One problem, located by 1-based line (or data row for tables); `line` is None for the file."""

    line: int | None
    message: str
    field: str | None = None  # e.g. "messages[2].role"; None for problems with the row as a whole
    unit: str = "line"  # "line" for JSONL, "row" for CSV/Parquet (row 1 is the first data row)

    def __str__(self) -> str:
        where = "file" if self.line is None else f"{self.unit} {self.line}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DatasetFormatError(ValueError):
    """A dataset cannot be used as is; `errors` holds the first problems, `error_count` all of them."""

    def __init__(
        self, errors: Sequence[ValidationIssue], *, error_count: int | None = None, source: str | None = None
    ) -> None:
        self.errors = list(errors)
        self.error_count = len(self.errors) if error_count is None else error_count
        self.source = source
        super().__init__(self._summary())

    def _summary(self, shown: int = 5) -> str:
        head = f"{self.source}: " if self.source else ""
        lines = "; ".join(str(issue) for issue in self.errors[:shown])
        more = self.error_count - min(shown, len(self.errors))
        tail = f" (and {more} more)" if more > 0 else ""
        return f"{head}{self.error_count} problem(s) in dataset: {lines}{tail}"


@dataclass(slots=True)
class ValidationResult:
    """What validating one file found. JSON-ready through `to_dict` for the API's file object."""

    format: str | None  # one of FORMATS; None when no row could be recognised
    rows: int  # non-blank lines (or table rows) read
    blank_lines: int = 0  # blank lines are allowed and skipped; counted for information
    errors: list[ValidationIssue] = field(default_factory=list)  # the first `max_errors`
    error_count: int = 0  # all problems, including those past the cap
    max_errors: int = DEFAULT_MAX_ERRORS
    unit: str = "line"  # what `line` numbers count: "line" (JSONL) or "row" (CSV/Parquet data rows)

    @property
    def is_valid(self) -> bool:
        return self.error_count == 0

    def raise_for_errors(self, *, source: str | None = None) -> None:
        if not self.is_valid:
            raise DatasetFormatError(self.errors, error_count=self.error_count, source=source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "rows": self.rows,
            "blank_lines": self.blank_lines,
            "is_valid": self.is_valid,
            "error_count": self.error_count,
            "errors": [issue.to_dict() for issue in self.errors],
            "errors_truncated": self.error_count > len(self.errors),
            "unit": self.unit,
        }
