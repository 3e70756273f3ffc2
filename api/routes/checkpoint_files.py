"""A checkpoint's adapter: the whole of it as a tar, or one file with Range (as artifacts are)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request

from api.deps import DownloadSlotDep, JobViewDep, SettingsDep, StorageDep
from api.downloads import DOWNLOAD_ERRORS, stream_response
from api.schemas.content import OCTET_STREAM, TAR, OctetStreamResponse, TarResponse, download_responses
from api.schemas.params import MAX_ID_LENGTH
from api.services.checkpoint_files import CheckpointFiles, checkpoint_file, checkpoint_files
from store.archive import iter_tar, tar_size

router = APIRouter(prefix="/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}", tags=["checkpoints"])
RangeHeader = Annotated[str | None, Header(alias="Range")]
CheckpointId = Annotated[str, Path(max_length=MAX_ID_LENGTH, description="The checkpoint's id (ftckpt-...)")]


def _files(request: Request, job, checkpoint_id: str, storage) -> CheckpointFiles:
    """Read on an autocommit connection given back at once: downloads hold none while they stream."""
    with request.app.state.read_sessionmaker() as session:
        return checkpoint_files(session, storage, job=job, checkpoint_id=checkpoint_id)


@router.get("/archive", response_class=TarResponse, responses=download_responses(TAR) | DOWNLOAD_ERRORS)
def download_checkpoint(request: Request, checkpoint_id: CheckpointId, job: JobViewDep, storage: StorageDep,
                        settings: SettingsDep, _slot: DownloadSlotDep, range_header: RangeHeader = None):
    """adapter_config.json and adapter_model.safetensors of the checkpoint, under `step-<N>/`."""
    files = _files(request, job, checkpoint_id, storage)
    return stream_response(size=tar_size(files), read=lambda a, b: iter_tar(files, storage, a, b),
                           range_header=range_header, filename=f"{job.id}-{files.name}.tar", media_type=TAR,
                           send_timeout=settings.stream_send_timeout_seconds)


@router.get("/files/{path:path}", response_class=OctetStreamResponse,
            responses=download_responses(OCTET_STREAM) | DOWNLOAD_ERRORS)
def download_checkpoint_file(request: Request, checkpoint_id: CheckpointId, path: str, job: JobViewDep,
                             storage: StorageDep, settings: SettingsDep, _slot: DownloadSlotDep,
                             range_header: RangeHeader = None):
    files = _files(request, job, checkpoint_id, storage)
    entry = checkpoint_file(files, path)  # only the offered paths: no traversal, no optimizer state
    key = f"{files.storage_prefix}/{entry['path']}"
    return stream_response(size=int(entry["bytes"]), read=lambda a, b: storage.open_range(key, a, b),
                           range_header=range_header, filename=path, send_timeout=settings.stream_send_timeout_seconds)
