"""Shared pieces: strict request models and OpenAI's cursor-page list."""

from __future__ import annotations

import re
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

T = TypeVar("T")

# Levels of arrays and objects a JSON request body may nest, the body itself being level 1.
# No request needs more than a handful; the bound keeps every walk over a body (ours,
# pydantic's, the JSON encoder's, PostgreSQL's) short.
MAX_JSON_DEPTH = 32
# What a text column (PostgreSQL's text and JSON, a UTF-8 response) cannot hold: NUL, and a
# lone surrogate, which `\udc80` in JSON text produces and Python's JSON reader lets through.
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def _shown(text: str) -> str:
    """`text` with the characters a response cannot carry written as JSON escapes (`\\u0000`)."""
    return _NOT_TEXT.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _text_problem(text: str) -> str | None:
    if (match := _NOT_TEXT.search(text)) is None:
        return None
    if match.group() == "\x00":
        return "contains a NUL character (\\u0000), which is not allowed"
    return f"contains a lone surrogate ({_shown(match.group())}), which is not valid Unicode text"


def find_invalid_json(value: Any, path: str = "", depth: int = 1) -> tuple[str, str] | None:
    """(where, what is wrong) for the first place in a parsed JSON value that no request may hold:
    a string or object key with a NUL or a lone surrogate, an array or object nested more than
    `MAX_JSON_DEPTH` levels deep. `where` is a dotted path (`metadata.k`, `outputs.0`; "body" for
    the value itself), with such characters escaped. None when all is well."""
    if isinstance(value, str):
        problem = _text_problem(value)
        return None if problem is None else (path or "body", problem)
    if not isinstance(value, dict | list):
        return None
    if depth > MAX_JSON_DEPTH:
        return path or "body", f"is nested more than {MAX_JSON_DEPTH} levels deep"
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and (problem := _text_problem(key)) is not None:
            return _shown(where), problem
        if (found := find_invalid_json(item, where, depth + 1)) is not None:
            return found
    return None


# OpenAI's metadata: up to 16 string pairs, keys of 1-64 characters, values of up to 512
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's bounds on `metadata` (jobs, evals, eval runs), as a pydantic validator's ValueError."""
    if value is not None:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
        for key, item in value.items():
            if not key or len(key) > MAX_METADATA_KEY:
                raise ValueError(f"metadata key '{key[:70]}' must be 1-{MAX_METADATA_KEY} characters")
            if len(item) > MAX_METADATA_VALUE:
                raise ValueError(f"metadata value for '{key}' is longer than {MAX_METADATA_VALUE} characters")
    return value


class StrictModel(BaseModel):
    """Request bodies reject unknown fields, so a typo (`rnak`) is a 400 naming it, not ignored,
    and non-finite numbers (`Infinity`, `NaN`: Python's JSON reads them, PostgreSQL's JSON does not).

    Before any field is read, the whole body is checked (`find_invalid_json`): NUL or a lone
    surrogate in any string or key, or nesting past `MAX_JSON_DEPTH`, is a 400 naming where
    (`param`), so nothing such is stored, and a new request model gets the check by deriving
    from this class. The error carries its `param` in its context (see api/errors.py).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_json_text(cls, value: Any) -> Any:
        if (found := find_invalid_json(value)) is not None:
            where, problem = found
            raise PydanticCustomError("invalid_json_text", f"'{where}' {problem}", {"param": where})
        return value


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
