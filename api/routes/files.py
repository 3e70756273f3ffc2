"""`/v1/files`: upload (streamed, size-limited, within the tenant's quota, validated), list, get,
delete, content."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from api.deps import DownloadSlotDep, FileViewDep, OwnedFileDep, SessionDep, SettingsDep, StorageDep, TenantDep
from api.downloads import DOWNLOAD_ERRORS, stream_response
from api.errors import not_found
from api.present import file_out
from api.quotas import storage_full, storage_left
from api.schemas.common import ListPage
from api.schemas.content import OCTET_STREAM, TAR, OctetStreamResponse, download_responses
from api.schemas.errors import error_responses
from api.schemas.files import FileDeleted, FileObject, FilePurpose
from api.schemas.params import Cursor, limit_param
from api.services import files as file_service
from api.uploads import receive_upload
from store.archive import iter_tar, tar_size
from store.models import Artifact
from store.settings import Settings

router = APIRouter(prefix="/v1/files", tags=["files"])


# The body is parsed by hand while it streams (api/uploads.py), so FastAPI cannot infer it: say it here
# for the OpenAPI document (clients, docs, schema-driven fuzzers).
_UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the dataset (JSONL)"},
                   "purpose": {"type": "string", "enum": list(file_service.PURPOSES)}}}}}}
_UPLOAD_ERRORS = error_responses(
    413, 415, 429, d413="The file is over this server's limit on one upload (DORA_MAX_UPLOAD_BYTES)",
    d429="Over the tenant's storage quota (type `insufficient_quota`, code `quota_exceeded`) or its request rate")
FilesLimit = limit_param(file_service.MAX_LIST_LIMIT)
# any purpose may be asked for, as in OpenAI's API (a client may filter on "batch"); files here have one of
# FilePurpose's, so another matches nothing
_PURPOSES = get_args(FilePurpose)
PurposeFilter = Annotated[str | None, Query(description=f"Only files of this purpose: {' or '.join(_PURPOSES)} (any "
                                                        "other matches no file here)", examples=list(_PURPOSES),
                                            max_length=64)]


def _storage_left(request: Request, settings: Settings, tenant_id: str) -> int | None:
    """Read on an autocommit connection given back at once: none is held while the body streams."""
    with request.app.state.read_sessionmaker() as session:
        return storage_left(session, settings=settings, tenant_id=tenant_id)


@router.post("", response_model=FileObject, openapi_extra={"requestBody": _UPLOAD_BODY}, responses=_UPLOAD_ERRORS)
async def upload_file(request: Request, caller: TenantDep, session: SessionDep, settings: SettingsDep,
                      storage: StorageDep) -> FileObject:
    """Upload a dataset. Over the tenant's storage quota the upload is refused (429) as soon as
    it passes what is left, while it streams; the quota is checked again, locked, when the file
    is committed, so concurrent uploads cannot pass it together."""
    max_bytes, over_limit = settings.max_upload_bytes, None
    left = await run_in_threadpool(_storage_left, request, settings, caller.tenant_id)
    if left is not None and left < max_bytes:
        cap = settings.max_stored_bytes_per_tenant
        if left == 0:
            raise storage_full(cap=cap, left=0)
        max_bytes, over_limit = left, (lambda: storage_full(cap=cap, left=left))
    upload = await receive_upload(request, max_bytes=max_bytes, tmp_dir=settings.upload_tmp_dir,
                                  over_limit=over_limit)
    try:
        row = await run_in_threadpool(lambda: file_service.create_from_upload(
            session=session, storage=storage, settings=settings, tenant_id=caller.tenant_id, upload=upload))
    finally:
        upload.cleanup()
    return file_out(row)


@router.get("", response_model=ListPage[FileObject])
def list_files(caller: TenantDep, session: SessionDep, after: Cursor = None,
               limit: FilesLimit = file_service.MAX_LIST_LIMIT, order: Literal["asc", "desc"] = "desc",
               purpose: PurposeFilter = None) -> ListPage[FileObject]:
    rows, has_more = file_service.list_files(session=session, tenant_id=caller.tenant_id, after=after, limit=limit,
                                             order=order, purpose=purpose)
    data = [file_out(r) for r in rows]
    return ListPage(data=data, has_more=has_more, first_id=rows[0].id if rows else None,
                    last_id=rows[-1].id if rows else None)


@router.get("/{file_id}", response_model=FileObject)
async def get_file(file: FileViewDep) -> FileObject:
    return file_out(file)


@router.delete("/{file_id}", response_model=FileDeleted,
               responses=error_responses(409, d409="The file is a job's result, or an active job uses it"))
def delete_file(file: OwnedFileDep, session: SessionDep, storage: StorageDep) -> FileDeleted:
    file_id = file.id
    file_service.delete_file(session=session, storage=storage, file=file)
    return FileDeleted(id=file_id)


def _artifact(request: Request, artifact_id: str) -> Artifact | None:
    with request.app.state.read_sessionmaker() as session:
        return session.get(Artifact, artifact_id)


@router.get("/{file_id}/content", response_class=OctetStreamResponse,
            responses=download_responses(OCTET_STREAM, TAR) | DOWNLOAD_ERRORS)
def file_content(request: Request, file: FileViewDep, storage: StorageDep, settings: SettingsDep,
                 _slot: DownloadSlotDep, range_header: Annotated[str | None, Header(alias="Range")] = None):
    """The uploaded bytes, or a job result's whole artifact as a tar stream (Range works on both).

    Rows are read on autocommit connections given back at once (FileViewDep, then the artifact's):
    nothing of the database is held while the body streams."""
    timeout = settings.stream_send_timeout_seconds
    if file.artifact_id is not None:
        artifact = _artifact(request, file.artifact_id)
        if artifact is None:  # its job's outputs were deleted since the file row was read
            raise not_found("file", file.id)
        return stream_response(size=tar_size(artifact),
                               read=lambda start, stop: iter_tar(artifact, storage, start, stop),
                               range_header=range_header, filename=file.filename, media_type=TAR,
                               etag=artifact.sha256, send_timeout=timeout)
    return stream_response(size=file.bytes, read=lambda start, stop: storage.open_range(file.storage_key, start, stop),
                           range_header=range_header, filename=file.filename, etag=file.sha256, send_timeout=timeout)
