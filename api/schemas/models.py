"""`/v1/models`: OpenAI's model object, and what deleting one answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    """OpenAI's `ModelDeleted` (the openai client's `client.models.delete`)."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool
