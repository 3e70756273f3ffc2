"""Which base model and which adapter files a model id names, for one tenant: torch-free, HTTP-free.

Shared by the API (completions, eval runs, the graders' judges: api/services/serving_models.py maps
these errors to its 400/404) and the eval executor (a model grader's judge, resolved per run's
tenant: worker/eval_run.py), which cannot import the API. Three kinds of id (store/jobs.py
fine_tuned_model_name writes the last two):
- a registered base name (DORA_BASE_MODELS): the base alone;
- `ft:<base>:<tenant>:<suffix>:<short id>`, a succeeded job's `fine_tuned_model`: its `adapter`
  artifact. A job that did not ask for the adapter output (only `merged` or `gguf`) is
  `ModelNotServableError`, naming its outputs and the checkpoint ids to use instead: its latest
  checkpoint is not the final model (the last step need not be a checkpoint step);
- `<that>:ckpt-step-<N>`: the checkpoint of step N of the job (any status), of its latest
  attempt, while its files are stored (older ones are pruned, keep_checkpoints).
Another tenant's model, a missing one and a deleted one (`jobs.model_deleted_at`, with its
checkpoints; store/model_deletion.py) are the same `ModelNotFoundError`.

Lookups: a fine-tuned model by `jobs.fine_tuned_model` (indexed, with the tenant). A checkpoint id
names the job only by the last 8 characters of its id: the job is found among the tenant's jobs of
that base by `ix_jobs_tenant_id_id` plus a LIKE on the id's end, then its checkpoint by
`ix_checkpoints_job_id_id`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from dora_contract.serving import ADAPTER_FILES, AdapterRef
from store.job_status import JobStatus
from store.jobs import fine_tuned_model_name
from store.models import Artifact, Checkpoint, Job
from store.storage import Storage

FT_PREFIX = "ft:"
CHECKPOINT_PREFIX = "ckpt-step-"
SHORT_ID_LENGTH = 8  # the job id's last characters in the name (store/jobs.py fine_tuned_model_name)
ADAPTER_OUTPUT = "adapter"  # the artifact a fine-tuned model is served from (dora_contract/run.py OUTPUTS)
MAX_STEP = 2**31 - 1  # steps are SQL INTEGER columns (checkpoints, metric points, samples)


class ModelNotFoundError(LookupError):
    """No such model for this tenant (or another tenant's: the same answer)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.")
        self.model = model


class MalformedModelIdError(ValueError):
    """An `ft:` id that is no model id; `why` says which part is wrong."""

    def __init__(self, model: str, why: str) -> None:
        super().__init__(f"'{model[:80]}' is not a model id ({why})")
        self.model, self.why = model, why


class ModelNotServableError(ValueError):
    """The model exists but cannot be served (no adapter output, its base no longer registered)."""


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


def parse_ft_name(model: str, *, tenant_name: str) -> FtName | None:
    """The parts of an `ft:` id, read from the right (the suffix and the short id hold no ':', a base
    name may). The organization is the caller's tenant name or the id is not theirs (None)."""
    parts = model[len(FT_PREFIX):].split(":")
    step = None
    if parts and parts[-1].startswith(CHECKPOINT_PREFIX):
        digits = parts.pop()[len(CHECKPOINT_PREFIX):]
        if not digits.isascii() or not digits.isdigit() or int(digits) > MAX_STEP:
            raise MalformedModelIdError(model, f"the checkpoint step must be a number from 0 to {MAX_STEP}")
        step = int(digits)
    if len(parts) < 4:
        raise MalformedModelIdError(model, "too few ':'-separated parts")
    short_id, suffix = parts[-1], parts[-2]
    if len(short_id) != SHORT_ID_LENGTH or not short_id.isalnum():
        raise MalformedModelIdError(model, f"its last part must be the job's {SHORT_ID_LENGTH}-character id")
    head = ":".join(parts[:-2])  # <base>:<organization>
    if not head.endswith(f":{tenant_name}") or len(head) == len(tenant_name) + 1:
        return None
    return FtName(base=head[:-len(tenant_name) - 1], tenant_name=tenant_name, suffix=suffix,
                  short_id=short_id.lower(), step=step)


def resolve_model(session: Session, storage: Storage, *, base_models: Collection[str], model: str, tenant_id: str,
                  tenant_name: str) -> ServedModel:
    """The base and adapter that `model` names for this tenant; raises ModelNotFoundError,
    MalformedModelIdError or ModelNotServableError. `base_models`: the registered names."""
    if not model.startswith(FT_PREFIX):
        if model in base_models:
            return ServedModel(base_model=model, adapter=None)
        raise ModelNotFoundError(model)
    name = parse_ft_name(model, tenant_name=tenant_name)
    if name is None:
        raise ModelNotFoundError(model)
    if name.step is None:
        return _fine_tuned(session, base_models, model=model, tenant_id=tenant_id)
    return _checkpoint(session, storage, base_models, model=model, name=name, tenant_id=tenant_id)


def _check_base(base_models: Collection[str], model: str, base: str) -> None:
    if base not in base_models:
        raise ModelNotServableError(f"The model '{model}' cannot be served: its base model '{base}' is no longer "
                                    "registered on this server (DORA_BASE_MODELS)")


def _fine_tuned(session: Session, base_models: Collection[str], *, model: str, tenant_id: str) -> ServedModel:
    job = session.scalars(select(Job).where(Job.fine_tuned_model == model, Job.tenant_id == tenant_id,
                                            Job.status == JobStatus.SUCCEEDED.value,
                                            Job.model_deleted_at.is_(None)).limit(1)).first()
    if job is None:
        raise ModelNotFoundError(model)
    _check_base(base_models, model, job.model)
    artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    adapter = artifacts.get(ADAPTER_OUTPUT)
    if adapter is None:
        outputs = ", ".join(sorted(artifacts)) or "none"
        raise ModelNotServableError(
            f"The model '{model}' cannot be served: its job kept no '{ADAPTER_OUTPUT}' output (its outputs: "
            f"{outputs}). Serve one of its checkpoints ('{model}:ckpt-step-<step>', listed at "
            f"/v1/fine_tuning/jobs/{job.id}/checkpoints), or train with the '{ADAPTER_OUTPUT}' output.")
    return ServedModel(base_model=job.model, adapter=AdapterRef(key=model, storage_prefix=adapter.storage_prefix))


def _checkpoint(session: Session, storage: Storage, base_models: Collection[str], *, model: str, name: FtName,
                tenant_id: str) -> ServedModel:
    candidates = session.scalars(select(Job).where(
        Job.tenant_id == tenant_id, Job.model == name.base, Job.id.like(f"%{name.short_id}"),
        Job.model_deleted_at.is_(None))).all()
    job = next((j for j in candidates
                if fine_tuned_model_name(model=j.model, tenant_name=name.tenant_name, suffix=j.suffix, job_id=j.id,
                                         step=name.step) == model), None)
    if job is None:
        raise ModelNotFoundError(model)
    checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == name.step)
                                 .order_by(Checkpoint.attempt.desc(), Checkpoint.id.desc()).limit(1)).first()
    # a pruned checkpoint keeps its row (the job's history) but not its files
    if checkpoint is None or not storage.exists(f"{checkpoint.storage_key}/{ADAPTER_FILES[0]}"):
        raise ModelNotFoundError(model)
    _check_base(base_models, model, job.model)
    return ServedModel(base_model=job.model, adapter=AdapterRef(key=model, storage_prefix=checkpoint.storage_key))
