"""A job's outputs: list artifacts, download one file (Range), or a whole artifact as a tar."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request

from api.deps import DownloadSlotDep, JobViewDep, OwnedJobDep, SessionDep, SettingsDep, StorageDep
from api.downloads import DOWNLOAD_ERRORS, stream_response
from api.present import artifact_out
from api.schemas.common import ListPage
from api.schemas.content import OCTET_STREAM, TAR, OctetStreamResponse, TarResponse, download_responses
from api.schemas.errors import error_responses
from api.schemas.jobs import ArtifactOut
from api.services import jobs as job_service
from store.archive import iter_tar, tar_size
from store.models import Artifact

router = APIRouter(prefix="/v1/fine_tuning/jobs/{job_id}/artifacts", tags=["artifacts"])
RangeHeader = Annotated[str | None, Header(alias="Range")]
ArtifactName = Annotated[str, Path(max_length=64, description="The artifact's name (`adapter`, `merged`, `gguf`)")]
# a queued or running job has no outputs yet (code job_not_finished; api/services/jobs.py get_artifact)
NOT_FINISHED = error_responses(409, d409="The job has not finished yet (code `job_not_finished`): its outputs "
                                         "appear when it has succeeded")


def _artifact(request: Request, job, name: str) -> Artifact:
    """Read on an autocommit connection given back at once: downloads hold none while they stream."""
    with request.app.state.read_sessionmaker() as session:
        return job_service.get_artifact(session=session, job=job, name=name)


@router.get("", response_model=ListPage[ArtifactOut])
def list_artifacts(job: OwnedJobDep, session: SessionDep) -> ListPage[ArtifactOut]:
    rows = job_service.list_artifacts(session=session, job=job)
    return ListPage(data=[artifact_out(r) for r in rows], has_more=False)


@router.get("/{name}/archive", response_class=TarResponse,
            responses=download_responses(TAR) | NOT_FINISHED | DOWNLOAD_ERRORS)
def download_archive(request: Request, name: ArtifactName, job: JobViewDep, storage: StorageDep,
                     settings: SettingsDep, _slot: DownloadSlotDep, range_header: RangeHeader = None):
    artifact = _artifact(request, job, name)
    return stream_response(size=tar_size(artifact), read=lambda a, b: iter_tar(artifact, storage, a, b),
                           range_header=range_header, filename=f"{job.id}-{name}.tar",
                           media_type=TAR, etag=artifact.sha256, send_timeout=settings.stream_send_timeout_seconds)


@router.get("/{name}/files/{path:path}", response_class=OctetStreamResponse,
            responses=download_responses(OCTET_STREAM) | NOT_FINISHED | DOWNLOAD_ERRORS)
def download_file(request: Request, name: ArtifactName, path: str, job: JobViewDep, storage: StorageDep,
                  settings: SettingsDep, _slot: DownloadSlotDep, range_header: RangeHeader = None):
    artifact = _artifact(request, job, name)
    entry = job_service.artifact_file(artifact=artifact, path=path)  # only listed paths: no traversal
    key = f"{artifact.storage_prefix}/{entry['path']}"
    return stream_response(size=int(entry["bytes"]), read=lambda a, b: storage.open_range(key, a, b),
                           range_header=range_header, filename=path.rsplit("/", 1)[-1], etag=entry.get("sha256"),
                           send_timeout=settings.stream_send_timeout_seconds)
