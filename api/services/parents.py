"""Continued training (issue #26): a job's `model` may be a fine-tuned model or a checkpoint of the
caller's, and the job then trains that adapter further on its base.

The id is resolved as completions resolve it (store/served_models.py: the tenant's own, not
deleted, with its adapter files stored; a running job's checkpoint counts), so whatever can be
called can be trained on. Everything that is not the caller's usable model is a 400 naming
`model` (another tenant's model reads as missing, as every object). The new job's `model` is the
base, so its `ft:` name shows the base (store/jobs.py fine_tuned_model_name); the parent is kept
in its JobSpec. The adapter must be the parent's method, rank, scale (alpha, rsLoRA) and target
modules: anything else could not start from those factors (or would change what they compute),
and is a 400 naming the setting that differs.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request
from api.schemas.jobs import JobCreate
from api.services import methods
from dora_contract import JobSpec, RunSettings
from dora_contract.job_spec import ParentRef
from store import served_models
from store.models import Checkpoint, Job
from store.settings import Settings
from store.storage import Storage


def is_continuation(model: str) -> bool:
    return model.startswith(served_models.FT_PREFIX)


def resolve_parent(session: Session, storage: Storage, settings: Settings, *, model: str, tenant_id: str,
                   tenant_name: str) -> tuple[str, Job, ParentRef]:
    """(the base model name, the parent's job, the reference the new job stores) for an `ft:` id."""
    try:
        served = served_models.resolve_model(session, storage, base_models=settings.base_models, model=model,
                                             tenant_id=tenant_id, tenant_name=tenant_name)
    except served_models.ModelNotFoundError:
        raise bad_request(f"The model '{model[:200]}' does not exist or you do not have access to it: continue from "
                          "a fine-tuned model or a checkpoint of yours (GET /v1/models, GET "
                          "/v1/fine_tuning/jobs/{id}/checkpoints)", param="model", code="model_not_found") from None
    except served_models.MalformedModelIdError as error:
        raise bad_request(f"Invalid value for 'model': {error}; a fine-tuned model is "
                          "ft:<base>:<organization>:<suffix>:<id>, a checkpoint adds :ckpt-step-<step>",
                          param="model", code="invalid_value") from None
    except served_models.ModelNotServableError as error:
        raise ApiError(400, f"{error}".replace("cannot be served", "cannot be trained further"), param="model",
                       code="model_not_supported") from None
    prefix = served.adapter.storage_prefix
    checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.storage_key == prefix).limit(1)).first()
    job_id = checkpoint.job_id if checkpoint is not None else session.scalars(
        select(Job.id).where(Job.tenant_id == tenant_id, Job.fine_tuned_model == model).limit(1)).one()
    parent = session.get(Job, job_id)
    return served.base_model, parent, ParentRef(model=model, job_id=job_id, storage_prefix=prefix,
                                                step=checkpoint.step if checkpoint is not None else None)


def check_same_adapter(request: JobCreate, run: RunSettings, parent: Job) -> None:
    """The new run's adapter is the parent's method and rank, or a 400 naming the setting."""
    theirs = JobSpec.from_data(parent.settings).run.adapter
    ours = run.adapter
    kind = request.method.type if request.method else "supervised"
    checked = [("method", f"method.{kind}.adapter" if kind in ("dpo", "reinforcement") else "method.type")] + [
        (name, methods.param_of(request, "adapter", name)) for name in ("rank", "alpha", "use_rslora",
                                                                        "target_modules")]
    for name, param in checked:
        if getattr(theirs, name) != getattr(ours, name):
            raise bad_request(f"'{request.model[:200]}' is a {theirs.method} adapter of rank {theirs.rank}; a job that "
                              f"continues it trains the same adapter, but this one has {name} "
                              f"{_shown(getattr(ours, name))}: set {param} to {_shown(getattr(theirs, name))}",
                              param=param, code="adapter_mismatch")


def _shown(value) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def check_still_there(session: Session, *, parent_job: Job, model: str) -> None:
    """Under the tenant's lock (taken by the active-jobs check), the parent's model is still not deleted:
    it was resolved before the lock, and a delete (which takes the same lock, store/model_deletion.py)
    may have come in between; the new job would then fail at the worker on files that are gone."""
    deleted = session.scalar(select(Job.model_deleted_at).where(Job.id == parent_job.id))
    if deleted is not None:
        raise bad_request(f"The model '{model[:200]}' was deleted while this job was being created",
                          param="model", code="model_not_found")
