"""Shared pieces: strict request models and OpenAI's cursor-page list."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class StrictModel(BaseModel):
    """Request bodies reject unknown fields, so a typo (`rnak`) is a 400 naming it, not ignored,
    and non-finite numbers (`Infinity`, `NaN`: Python's JSON reads them, PostgreSQL's JSON does not)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def find_nul(value: Any, path: str = "") -> str | None:
    """Where in a parsed JSON value a string (or an object key) holds a NUL character, or None."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where.replace("\x00", "\\u0000")
            if (found := find_nul(item, where)) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := find_nul(item, f"{path}.{index}" if path else str(index))) is not None:
                return found
    return None


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
