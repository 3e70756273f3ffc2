"""Files: accept a validated upload into storage, list, delete, and read content.

An upload is kept only if it validates and fits the tenant's storage quota: the dataset is
checked on the staged temp file, and the storage object and the row are written only after
that; the quota is checked again (locked, api/quotas.py) in the transaction that inserts the
row, and a refused file's object is deleted, so a rejected file leaves nothing.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.datasets import validate_dataset
from api.errors import ApiError, bad_request
from api.eval_files import EVAL_FORMAT, EVAL_PURPOSE, EvalRowError, check_upload
from api.quotas import check_storage
from api.services.scope import owned, page
from api.uploads import Upload
from store.ids import new_id
from store.job_queries import active_job_using_file
from store.models import File
from store.settings import Settings
from store.storage import Storage, file_key

PURPOSES = ("fine-tune", EVAL_PURPOSE)  # what may be uploaded (the other FilePurpose is a job's result)
MAX_LIST_LIMIT = 10_000  # OpenAI's files list takes up to 10,000 per page


def list_files(*, session: Session, tenant_id: str, after: str | None, limit: int, order: str,
               purpose: str | None) -> tuple[list[File], bool]:
    query = owned(File, tenant_id=tenant_id)
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    return page(session, query, id_column=File.id, after=after, limit=limit, ascending=order == "asc",
                max_limit=MAX_LIST_LIMIT)


def _check_purpose(upload: Upload) -> str:
    purpose = upload.fields.get("purpose")
    if purpose is None:
        raise bad_request("Missing required parameter: 'purpose' (use 'fine-tune')", param="purpose",
                          code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise bad_request(f"Invalid purpose '{purpose[:64]}': this server accepts 'fine-tune' or '{EVAL_PURPOSE}'",
                          param="purpose")
    return purpose


def _where(error: dict) -> str:
    return "file" if error["line"] is None else f"line {error['line']}"


def _check_dataset(upload: Upload) -> tuple[str | None, int]:
    report = validate_dataset(upload.path)
    if not report.ok:
        shown = "; ".join(f"{_where(e)}: {e['message']}" for e in report.errors[:5])
        more = f" (and {report.error_count - 5} more)" if report.error_count > 5 else ""
        raise bad_request(f"Invalid training data in '{upload.filename}': {shown}{more}", param="file",
                          code="invalid_file_format", details=report.errors)
    return report.format, report.rows


def _check_eval_file(upload: Upload, settings: Settings) -> tuple[str, int]:
    """An eval data file (api/eval_files.py): JSONL objects; its items are checked against an eval's
    item_schema when a run names it."""
    try:
        return EVAL_FORMAT, check_upload(upload.path, max_rows=settings.max_eval_items)
    except EvalRowError as error:
        raise bad_request(f"Invalid eval data in '{upload.filename}': {error}", param="file",
                          code="invalid_file_format") from None


def create_from_upload(*, session: Session, storage: Storage, settings: Settings, tenant_id: str,
                       upload: Upload) -> File:
    """Validate, then store the object, then check the quota and commit the row (the object is
    removed if either fails)."""
    purpose = _check_purpose(upload)
    fmt, rows = _check_eval_file(upload, settings) if purpose == EVAL_PURPOSE else _check_dataset(upload)
    file_id = new_id("file")
    key = file_key(tenant_id, file_id)
    storage.put_file(key, upload.path)
    row = File(id=file_id, tenant_id=tenant_id, filename=upload.filename, purpose=purpose, bytes=upload.size,
               status="processed", format=fmt, rows=rows, sha256=upload.sha256, storage_key=key)
    try:
        check_storage(session, settings=settings, tenant_id=tenant_id, size=upload.size)
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        storage.delete(key)
        raise
    return row


def delete_file(*, session: Session, storage: Storage, file: File) -> None:
    """Delete an uploaded file not used by an active job (results go with their job)."""
    if file.artifact_id is not None:
        raise ApiError(409, f"File {file.id} is a job result and is kept with its job; deleting the job's model "
                            "(DELETE /v1/models/{model}) deletes it", param="file_id", code="file_in_use")
    job_id = active_job_using_file(session, tenant_id=file.tenant_id, file_id=file.id)
    if job_id is not None:
        raise ApiError(409, f"File {file.id} is used by active job {job_id}; cancel it first", param="file_id",
                       code="file_in_use")
    key = file.storage_key
    session.delete(file)
    session.commit()
    if key:
        storage.delete(key)
