"""Shared pieces: strict request models and OpenAI's cursor-page list."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class StrictModel(BaseModel):
    """Request bodies reject unknown fields, so a typo (`rnak`) is a 400 naming it, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
