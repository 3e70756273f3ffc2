"""`/v1/files`: upload (streamed, size-limited, validated), list, get, delete, content."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from api.deps import FileViewDep, OwnedFileDep, SessionDep, SettingsDep, StorageDep, TenantDep
from api.downloads import stream_response
from api.present import file_out
from api.schemas.common import ListPage
from api.schemas.files import FileDeleted, FileObject
from api.services import files as file_service
from api.uploads import receive_upload
from store.archive import iter_tar, tar_size
from store.models import Artifact

router = APIRouter(prefix="/v1/files", tags=["files"])


# The body is parsed by hand while it streams (api/uploads.py), so FastAPI cannot infer it: say it here
# for the OpenAPI document (clients, docs, schema-driven fuzzers).
_UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the dataset (JSONL)"},
                   "purpose": {"type": "string", "enum": ["fine-tune"]}}}}}}


@router.post("", response_model=FileObject, openapi_extra={"requestBody": _UPLOAD_BODY})
async def upload_file(request: Request, caller: TenantDep, session: SessionDep, settings: SettingsDep,
                      storage: StorageDep) -> FileObject:
    upload = await receive_upload(request, max_bytes=settings.max_upload_bytes, tmp_dir=settings.upload_tmp_dir)
    try:
        row = await run_in_threadpool(lambda: file_service.create_from_upload(
            session=session, storage=storage, tenant_id=caller.tenant_id, upload=upload))
    finally:
        upload.cleanup()
    return file_out(row)


@router.get("", response_model=ListPage[FileObject])
def list_files(caller: TenantDep, session: SessionDep, after: str | None = None,
               limit: Annotated[int, Query()] = 10_000, order: Literal["asc", "desc"] = "desc",
               purpose: str | None = None) -> ListPage[FileObject]:
    rows, has_more = file_service.list_files(session=session, tenant_id=caller.tenant_id, after=after, limit=limit,
                                             order=order, purpose=purpose)
    data = [file_out(r) for r in rows]
    return ListPage(data=data, has_more=has_more, first_id=rows[0].id if rows else None,
                    last_id=rows[-1].id if rows else None)


@router.get("/{file_id}", response_model=FileObject)
async def get_file(file: FileViewDep) -> FileObject:
    return file_out(file)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file: OwnedFileDep, session: SessionDep, storage: StorageDep) -> FileDeleted:
    file_id = file.id
    file_service.delete_file(session=session, storage=storage, file=file)
    return FileDeleted(id=file_id)


@router.get("/{file_id}/content")
def file_content(file: OwnedFileDep, session: SessionDep, storage: StorageDep,
                 range_header: Annotated[str | None, Header(alias="Range")] = None):
    """The uploaded bytes, or a job result's whole artifact as a tar stream (Range works on both)."""
    if file.artifact_id is not None:
        artifact = session.get(Artifact, file.artifact_id)
        return stream_response(size=tar_size(artifact),
                               read=lambda start, stop: iter_tar(artifact, storage, start, stop),
                               range_header=range_header, filename=file.filename, media_type="application/x-tar",
                               etag=artifact.sha256)
    return stream_response(size=file.bytes, read=lambda start, stop: storage.open_range(file.storage_key, start, stop),
                           range_header=range_header, filename=file.filename, etag=file.sha256)
