"""Which base model and which adapter files a completion's `model` names, for the caller's tenant.

Three kinds of id (store/jobs.py fine_tuned_model_name writes the last two):
- a registered base name (DORA_BASE_MODELS): the base alone;
- `ft:<base>:<tenant>:<suffix>:<short id>`, a succeeded job's `fine_tuned_model`: its `adapter`
  artifact. A job that did not ask for the adapter output (only `merged` or `gguf`) is a 400
  `model_not_servable` that names its outputs and the checkpoint ids to use instead: its latest
  checkpoint is not the final model (the last step need not be a checkpoint step), and serving
  it under the final model's name would answer with another model without saying so;
- `<that>:ckpt-step-<N>`: the checkpoint of step N of the job (any status: a running job's
  checkpoints can be tried while it trains), of its latest attempt, while its files are stored
  (older ones are pruned, keep_checkpoints).

Another tenant's model and a missing one get the same 404 (`model_not_found`), as every object
does (api/services/scope.py). A malformed `ft:` id is a 400 naming `model`.

Lookups: a fine-tuned model by `jobs.fine_tuned_model` (indexed, with the tenant). A checkpoint
id names the job only by the last 8 characters of its id: the job is found among the tenant's
jobs of that base and suffix by `ix_jobs_tenant_id_id` plus a LIKE on the id's end (a scan of
the tenant's entries of that index, no table-wide scan; an expression index on the id's last 8
characters would make it one probe if tenants grow to many thousands of jobs), then its
checkpoint by `ix_checkpoints_job_id_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request
from api.schemas.params import MAX_STEP
from dora_contract.serving import ADAPTER_FILES, AdapterRef
from store.job_status import JobStatus
from store.jobs import fine_tuned_model_name
from store.models import Artifact, Checkpoint, Job
from store.settings import Settings
from store.storage import Storage

FT_PREFIX = "ft:"
CHECKPOINT_PREFIX = "ckpt-step-"
SHORT_ID_LENGTH = 8  # the job id's last characters in the name (store/jobs.py fine_tuned_model_name)
ADAPTER_OUTPUT = "adapter"  # the artifact a fine-tuned model is served from (dora_contract/run.py OUTPUTS)


@dataclass(frozen=True)
class ServedModel:
    base_model: str
    adapter: AdapterRef | None  # None: the base alone

    @property
    def route_key(self) -> str:
        """What requests of one model share, so that they prefer the same server (its adapter cache)."""
        return self.adapter.key if self.adapter is not None else self.base_model


@dataclass(frozen=True)
class FtName:
    base: str
    tenant_name: str
    suffix: str
    short_id: str
    step: int | None


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist or you do not have access to it.", param="model",
                    code="model_not_found")


def _malformed(model: str, why: str) -> ApiError:
    return bad_request(f"Invalid value for 'model': '{model[:80]}' is not a model id ({why}); a fine-tuned model is "
                       "ft:<base>:<organization>:<suffix>:<id>, a checkpoint adds :ckpt-step-<step>", param="model",
                       code="invalid_value")


def parse_ft_name(model: str, *, tenant_name: str) -> FtName | None:
    """The parts of an `ft:` id, read from the right (the suffix and the short id hold no ':', a base
    name may). The organization is the caller's tenant name or the id is not theirs (None)."""
    parts = model[len(FT_PREFIX):].split(":")
    step = None
    if parts and parts[-1].startswith(CHECKPOINT_PREFIX):
        digits = parts.pop()[len(CHECKPOINT_PREFIX):]
        if not digits.isascii() or not digits.isdigit() or int(digits) > MAX_STEP:
            raise _malformed(model, f"the checkpoint step must be a number from 0 to {MAX_STEP}")
        step = int(digits)
    if len(parts) < 4:
        raise _malformed(model, "too few ':'-separated parts")
    short_id, suffix = parts[-1], parts[-2]
    if len(short_id) != SHORT_ID_LENGTH or not short_id.isalnum():
        raise _malformed(model, f"its last part must be the job's {SHORT_ID_LENGTH}-character id")
    head = ":".join(parts[:-2])  # <base>:<organization>
    if not head.endswith(f":{tenant_name}") or len(head) == len(tenant_name) + 1:
        return None
    return FtName(base=head[:-len(tenant_name) - 1], tenant_name=tenant_name, suffix=suffix,
                  short_id=short_id.lower(), step=step)


def resolve_model(session: Session, storage: Storage, settings: Settings, *, model: str, tenant_id: str,
                  tenant_name: str) -> ServedModel:
    """The base and adapter that `model` names for this tenant, or the 400/404 it gets."""
    if not model.startswith(FT_PREFIX):
        if model in settings.base_models:
            return ServedModel(base_model=model, adapter=None)
        raise model_not_found(model)
    name = parse_ft_name(model, tenant_name=tenant_name)
    if name is None:
        raise model_not_found(model)
    if name.step is None:
        return _fine_tuned(session, settings, model=model, tenant_id=tenant_id)
    return _checkpoint(session, storage, settings, model=model, name=name, tenant_id=tenant_id)


def _check_base(settings: Settings, model: str, base: str) -> None:
    if base not in settings.base_models:
        raise ApiError(400, f"The model '{model}' cannot be served: its base model '{base}' is no longer registered "
                            "on this server (DORA_BASE_MODELS)", param="model", code="model_not_servable")


def _fine_tuned(session: Session, settings: Settings, *, model: str, tenant_id: str) -> ServedModel:
    job = session.scalars(select(Job).where(Job.fine_tuned_model == model, Job.tenant_id == tenant_id,
                                            Job.status == JobStatus.SUCCEEDED.value).limit(1)).first()
    if job is None:
        raise model_not_found(model)
    _check_base(settings, model, job.model)
    artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    adapter = artifacts.get(ADAPTER_OUTPUT)
    if adapter is None:
        outputs = ", ".join(sorted(artifacts)) or "none"
        raise ApiError(400, f"The model '{model}' cannot be served: its job kept no '{ADAPTER_OUTPUT}' output (its "
                            f"outputs: {outputs}). Serve one of its checkpoints ('{model}:ckpt-step-<step>', listed "
                            f"at /v1/fine_tuning/jobs/{job.id}/checkpoints), or train with the '{ADAPTER_OUTPUT}' "
                            "output.", param="model", code="model_not_servable")
    return ServedModel(base_model=job.model, adapter=AdapterRef(key=model, storage_prefix=adapter.storage_prefix))


def _checkpoint(session: Session, storage: Storage, settings: Settings, *, model: str, name: FtName,
                tenant_id: str) -> ServedModel:
    candidates = session.scalars(select(Job).where(
        Job.tenant_id == tenant_id, Job.model == name.base, Job.id.like(f"%{name.short_id}"))).all()
    job = next((j for j in candidates
                if fine_tuned_model_name(model=j.model, tenant_name=name.tenant_name, suffix=j.suffix, job_id=j.id,
                                         step=name.step) == model), None)
    if job is None:
        raise model_not_found(model)
    checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == name.step)
                                 .order_by(Checkpoint.attempt.desc(), Checkpoint.id.desc()).limit(1)).first()
    # a pruned checkpoint keeps its row (the job's history) but not its files
    if checkpoint is None or not storage.exists(f"{checkpoint.storage_key}/{ADAPTER_FILES[0]}"):
        raise model_not_found(model)
    _check_base(settings, model, job.model)
    return ServedModel(base_model=job.model, adapter=AdapterRef(key=model, storage_prefix=checkpoint.storage_key))
