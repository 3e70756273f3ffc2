"""A checkpoint's adapter as a download (issue #26): the same tar and per-file Range as an artifact.

A checkpoint folder in storage also holds the optimizer's and the scheduler's state (several times
the adapter's size, and of no use outside a resumed run); only `ADAPTER_FILES` (a PEFT folder that
`PeftModel.from_pretrained` or `dora serve` loads) are offered. Their sizes are read from storage
(a checkpoint row records no file list), so a pruned checkpoint (the row stays, the files do not)
or a deleted model's is a 404 that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, not_found
from dora_contract.serving import ADAPTER_FILES
from store.models import Checkpoint, Job
from store.storage import Storage


@dataclass(frozen=True)
class CheckpointFiles:
    """What store/archive.py's tar needs of an artifact: the tar's folder name, prefix, files and time."""

    name: str  # `step-<N>`: the folder inside the tar
    storage_prefix: str
    files: list[dict]  # [{"path", "bytes"}]
    created_at: datetime


def checkpoint_files(session: Session, storage: Storage, *, job: Job, checkpoint_id: str) -> CheckpointFiles:
    checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.id == checkpoint_id,
                                                          Checkpoint.job_id == job.id)).first()
    if checkpoint is None or job.model_deleted_at is not None:
        raise not_found("checkpoint", checkpoint_id, param="checkpoint_id")
    files = []
    for path in ADAPTER_FILES:
        try:
            files.append({"path": path, "bytes": storage.size(f"{checkpoint.storage_key}/{path}")})
        except FileNotFoundError:
            raise ApiError(404, f"The files of checkpoint {checkpoint_id} (step {checkpoint.step}) are no longer "
                                "stored: a job keeps its newest keep_checkpoints checkpoints", param="checkpoint_id",
                           code="checkpoint_not_found") from None
    return CheckpointFiles(name=f"step-{checkpoint.step}", storage_prefix=checkpoint.storage_key, files=files,
                           created_at=checkpoint.created_at)


def checkpoint_file(files: CheckpointFiles, path: str) -> dict:
    """One of the offered files; any other path (optimizer.pt, '../x') is a 404."""
    entry = next((f for f in files.files if f["path"] == path), None)
    if entry is None:
        raise not_found("checkpoint file", path[:128], param="path")
    return entry
