"""Per-tenant quotas: queued+running jobs, jobs created per window, and stored bytes (uploaded files
and job results, store/quotas.py stored_bytes).

Over a quota the answer is a 429 in OpenAI's error shape with `type` "insufficient_quota" (the
type OpenAI gives its own quota errors) and code "quota_exceeded", `Retry-After:
QUOTA_RETRY_AFTER_SECONDS` and `x-should-retry: false`: a quota frees up only when a job ends or
a file is deleted, not in the second or two an SDK would wait, so the openai client (which
honours that header) does not retry it by itself. A rate-limit 429 is told apart by its type
("requests") and code ("rate_limit_exceeded"); see api/rate_limit.py.

The job creation rate (DORA_MAX_JOBS_CREATED_PER_TENANT per DORA_JOB_CREATION_WINDOW_SECONDS)
counts every job created in the window, cancelled ones included: cancelling frees a place under
the active-jobs cap, so without it a create-then-cancel loop could create without bound, each
message waking a worker. Over it the answer is a rate-limit 429 (type "requests", code
"rate_limit_exceeded") whose Retry-After says when the oldest job of the window leaves it.

Each check locks the tenant's row (store/quotas.py) inside the transaction that then inserts
the job or the file row, so concurrent requests of one tenant cannot both pass a cap at N-1.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy.orm import Session

from api.errors import ApiError
from store.models import utcnow
from store.quotas import active_jobs, jobs_created_since, lock_tenant, stored_bytes
from store.settings import Settings

QUOTA_RETRY_AFTER_SECONDS = 60


def quota_exceeded(message: str, *, param: str | None = None) -> ApiError:
    return ApiError(429, message, param=param, code="quota_exceeded", type="insufficient_quota",
                    headers={"Retry-After": str(QUOTA_RETRY_AFTER_SECONDS), "x-should-retry": "false"})


def check_active_jobs(session: Session, *, settings: Settings, tenant_id: str) -> None:
    """Lock the tenant and refuse one more job at the cap (rolled back, 429). On success the lock
    stays held: the caller inserts the job in this same transaction and commits."""
    cap = settings.max_active_jobs_per_tenant
    if not cap:
        return
    lock_tenant(session, tenant_id=tenant_id)
    active = active_jobs(session, tenant_id=tenant_id)
    if active >= cap:
        session.rollback()
        raise quota_exceeded(f"Quota exceeded: this tenant already has {active} queued or running fine-tuning jobs "
                             f"and the limit is {cap}. Wait for one to finish, or cancel or pause one, then try again.")


def check_creation_rate(session: Session, *, settings: Settings, tenant_id: str) -> None:
    """Lock the tenant and refuse one more job when it created its limit of jobs in the window
    (rolled back, 429 with Retry-After); on success the lock stays held until the caller commits."""
    cap, window = settings.max_jobs_created_per_tenant, settings.job_creation_window_seconds
    if not cap:
        return
    lock_tenant(session, tenant_id=tenant_id)
    now = utcnow()
    created, oldest = jobs_created_since(session, tenant_id=tenant_id, since=now - timedelta(seconds=window))
    if created >= cap:
        session.rollback()
        wait = max(1, math.ceil((oldest + timedelta(seconds=window) - now).total_seconds())) if oldest else window
        raise ApiError(429, f"Rate limit reached: this tenant created {created} fine-tuning jobs in the last "
                            f"{window} seconds and the limit is {cap}, cancelled jobs included. Try again in "
                            f"{wait} seconds.", code="rate_limit_exceeded", type="requests",
                       headers={"Retry-After": str(wait)})


def storage_left(session: Session, *, settings: Settings, tenant_id: str) -> int | None:
    """Bytes the tenant may still upload (0 or more); None when there is no storage quota."""
    cap = settings.max_stored_bytes_per_tenant
    if not cap:
        return None
    return max(0, cap - stored_bytes(session, tenant_id=tenant_id))


def storage_full(*, cap: int, left: int, size: int | None = None) -> ApiError:
    """The 429 for an upload that does not fit; `size` when its size is known."""
    what = f"This file ({size} bytes)" if size is not None else "This upload"
    return quota_exceeded(f"Quota exceeded: {what} is larger than the {left} bytes left of this tenant's storage "
                          f"quota ({cap} bytes of uploaded files and job results). Delete files "
                          "(DELETE /v1/files/{file_id}) or fine-tuned models (DELETE /v1/models/{model}) you no "
                          "longer need, then try again.", param="file")


def check_storage(session: Session, *, settings: Settings, tenant_id: str, size: int) -> None:
    """Lock the tenant and refuse a file of `size` bytes that would go over the quota (rolled
    back, 429); on success the lock stays held until the caller commits the file's row."""
    cap = settings.max_stored_bytes_per_tenant
    if not cap:
        return
    lock_tenant(session, tenant_id=tenant_id)
    left = max(0, cap - stored_bytes(session, tenant_id=tenant_id))
    if size > left:
        session.rollback()
        raise storage_full(cap=cap, left=left, size=size)
