"""Dataset formats users upload: read and validate JSONL rows, normalise them for training.

Pure Python on purpose (no torch, no transformers): the API process imports it to validate
uploads, and must stay light. Tokenisation lives in `dora_core.data`.

    result = validate_jsonl(upload.file)      # streaming; result.errors carry line numbers
    examples, result = read_jsonl_examples(path)   # raises DatasetFormatError if invalid
"""

from dora_formats.jsonl import DEFAULT_MAX_LINE_BYTES, iter_jsonl_examples, read_jsonl_examples, validate_jsonl
from dora_formats.records import (
    ALPACA,
    CHAT,
    DEFAULT_MAX_ERRORS,
    FORMATS,
    MAX_JSON_DEPTH,
    PREFERENCE,
    PROMPT_COMPLETION,
    PROMPTS,
    ROLES,
    SFT_FORMATS,
    TEXT,
    TEXT_ROLE,
    DatasetFormatError,
    Example,
    Segment,
    ValidationIssue,
    ValidationResult,
)
from dora_formats.rules import check_row, detect_format, to_example
from dora_formats.validate import RowValidator

__all__ = [
    "ALPACA",
    "CHAT",
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_MAX_LINE_BYTES",
    "FORMATS",
    "MAX_JSON_DEPTH",
    "PREFERENCE",
    "PROMPT_COMPLETION",
    "PROMPTS",
    "ROLES",
    "SFT_FORMATS",
    "TEXT",
    "TEXT_ROLE",
    "DatasetFormatError",
    "Example",
    "RowValidator",
    "Segment",
    "ValidationIssue",
    "ValidationResult",
    "check_row",
    "detect_format",
    "iter_jsonl_examples",
    "read_jsonl_examples",
    "to_example",
    "validate_jsonl",
]
