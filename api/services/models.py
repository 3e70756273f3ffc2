"""`/v1/models`: the base models the operator allows, and the caller's finished fine-tunes; deleting one."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request, not_found
from api.present import ts
from api.schemas.models import ModelObject
from store import model_deletion
from store.job_queries import fine_tuned_models
from store.quotas import lock_tenant
from store.served_models import CHECKPOINT_PREFIX
from store.settings import Settings
from store.storage import Storage, job_key

log = logging.getLogger(__name__)


def list_models(*, session: Session, settings: Settings, tenant_id: str, tenant_name: str) -> list[ModelObject]:
    base = [ModelObject(id=name, created=0, owned_by="system") for name in sorted(settings.base_models)]
    tuned = [ModelObject(id=job.fine_tuned_model, created=ts(job.finished_at) or 0, owned_by=tenant_name)
             for job in fine_tuned_models(session, tenant_id=tenant_id)]
    return base + tuned


def delete_model(*, session: Session, storage: Storage, settings: Settings, tenant_id: str, model: str) -> None:
    """Delete a fine-tuned model, its outputs and its checkpoints (store/model_deletion.py says in
    which order and why). 400 for a base model or a checkpoint id, 404 for a missing, deleted or
    another tenant's model, 409 while an active job continues from it."""
    if model in settings.base_models:
        raise bad_request(f"Invalid value for 'model': '{model}' is a base model, which cannot be deleted; only "
                          "fine-tuned models (ft:...) can", param="model", code="invalid_value")
    if f":{CHECKPOINT_PREFIX}" in model:
        raise bad_request(f"Invalid value for 'model': '{model[:120]}' is a checkpoint; checkpoints are deleted with "
                          "their fine-tuned model (DELETE /v1/models/<ft id without :ckpt-step-N>)", param="model",
                          code="invalid_value")
    lock_tenant(session, tenant_id=tenant_id)  # a job created from the model waits for this transaction
    job = model_deletion.deletable(session, tenant_id=tenant_id, model=model)
    if job is None:
        session.rollback()
        raise not_found("model", model, param="model")
    child = model_deletion.active_job_continuing_from(session, tenant_id=tenant_id, job_id=job.id)
    if child is not None:
        session.rollback()
        raise ApiError(409, f"The model '{model}' cannot be deleted: job {child} is training from it (or from one of "
                            "its checkpoints). Wait for that job to finish, or cancel it, then try again.",
                       param="model", code="model_in_use")
    model_deletion.mark_deleted(session, job=job)
    job_id, job_tenant = job.id, job.tenant_id
    session.commit()
    prefix = job_key(job_tenant, job_id)
    try:
        storage.delete_prefix(prefix)
        left = storage.list(prefix)  # a local delete ignores errors: what is still there tells
        if left:
            raise OSError(f"{len(left)} objects are still stored, e.g. {left[0]}")
    except Exception as error:  # noqa: BLE001 - any backend's error (OSError, botocore's): retried by the client
        log.warning("model %s (job %s): its files could not all be deleted: %s", model, job_id, error)
        raise ApiError(503, f"The model '{model}' is deleted but some of its files could not be removed from storage "
                            "yet; send the same DELETE again to finish.", code="storage_unavailable",
                       headers={"Retry-After": "5"}) from None
    model_deletion.forget_outputs(session, job_id=job_id)
