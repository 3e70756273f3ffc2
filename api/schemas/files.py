"""Files: OpenAI's `file` object plus what our validator found (format, rows)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

# an upload (training data, eval data), or a job's result (a tar of one output)
FilePurpose = Literal["fine-tune", "evals", "fine-tune-results"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"] = "processed"  # OpenAI's; uploads are validated: processed
    status_details: str | None = None
    expires_at: int | None = None
    # additions
    format: str | None = None  # chat | prompt_completion | alpaca | text | preference | eval
    rows: int | None = None
    sha256: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
