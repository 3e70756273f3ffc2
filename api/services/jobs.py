"""Fine-tuning jobs: create (idempotent), list, cancel, and what a job has produced.

A created job stores its `JobSpec` (dora_contract/job_spec.py) in jobs.settings: the resolved
run, the base model's source and public id, and the files' storage keys; the worker reads it.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request, not_found
from api.quotas import check_active_jobs, check_creation_rate
from api.schemas.jobs import JobCreate
from api.services import job_evals, methods, parents
from api.services.limits import check_gpus
from api.services.memory_check import check_fits_a_worker
from api.services.reinforcement import check_files as check_reinforcement_files
from api.services.reinforcement import check_judges
from api.services.scope import check_limit, get_owned, owned, page
from dora_contract import BaseModelRef, FileRef, JobSpec
from dora_contract.architectures import gguf_unsupported_reason
from dora_contract.training import MAX_SEED
from dora_formats import PREFERENCE
from store import jobs as job_store
from store.base_models import public_id, registered_architecture, registration
from store.job_queries import with_status
from store.jobs import ACTIVE, JobStatus
from store.models import Artifact, Checkpoint, File, Job, JobEvent, JobSample, MetricPoint
from store.settings import Settings
from store.storage import Storage

MAX_METRICS_LIMIT = 10_000  # metric points per page
MAX_MODELS_NAMED = 20  # base models named in a model_not_found message


def _find_by_key(session: Session, *, tenant_id: str, key: str) -> Job | None:
    return session.scalars(owned(Job, tenant_id=tenant_id).where(Job.idempotency_key == key)).first()


def _replay(job: Job, request_hash: str) -> Job:
    if job.request_hash != request_hash:
        raise ApiError(409, "This Idempotency-Key was already used with a different request body",
                       param="Idempotency-Key", code="idempotency_key_reused")
    return job


def _training_input(session: Session, *, tenant_id: str, file_id: str | None, param: str) -> FileRef | None:
    if file_id is None:
        return None
    row: File = get_owned(session, File, tenant_id=tenant_id, object_id=file_id, what="file", param=param)
    if row.purpose != "fine-tune" or row.storage_key is None:
        raise bad_request(f"File {file_id} has purpose '{row.purpose}', not 'fine-tune'", param=param)
    return FileRef(id=row.id, storage_key=row.storage_key, format=row.format, rows=row.rows)


def _as_client_error(error: ApiError) -> ApiError:
    """A missing or foreign file named in the body is the caller's mistake in a field: 400, not 404."""
    return bad_request(error.message, param=error.param, code=error.code) if error.status_code == 404 else error


def _model_not_found(settings: Settings, *, model: str) -> ApiError:
    """The 400 for a `model` that is no registered base model, naming the ones there are (the first
    MAX_MODELS_NAMED). An `ft:` id is resolved before (api/services/parents.py)."""
    names = sorted(settings.base_models)
    if names:
        more = f" and {len(names) - MAX_MODELS_NAMED} more" if len(names) > MAX_MODELS_NAMED else ""
        choices = (f"the base models here are {', '.join(repr(n) for n in names[:MAX_MODELS_NAMED])}{more} "
                   "(GET /v1/models lists them)")
    else:
        choices = "this server has no base models registered (the operator sets DORA_BASE_MODELS)"
    return bad_request(f"The model '{model}' does not exist or is not available for fine-tuning here: {choices}",
                       param="model", code="model_not_found")


def create_job(*, session: Session, settings: Settings, storage: Storage, tenant_id: str, tenant_name: str,
               request: JobCreate, idempotency_key: str | None) -> tuple[Job, bool]:
    """(job, created). The same Idempotency-Key and body return the first job, created=False.

    At the tenant's cap on queued+running jobs this is a 429 (api/quotas.py): the count and the
    insert are one transaction under a lock on the tenant's row, so concurrent creates cannot
    pass the cap together."""
    request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
    if idempotency_key and (existing := _find_by_key(session, tenant_id=tenant_id, key=idempotency_key)):
        return _replay(existing, request_hash), False
    base, parent_job, parent = request.model, None, None
    if parents.is_continuation(request.model):  # continued training: the adapter of an ft: model or checkpoint
        base, parent_job, parent = parents.resolve_parent(session, storage, settings, model=request.model,
                                                          tenant_id=tenant_id, tenant_name=tenant_name)
    registered = registration(settings, base)
    if registered is None:
        raise _model_not_found(settings, model=request.model)
    try:
        training = _training_input(session, tenant_id=tenant_id, file_id=request.training_file, param="training_file")
        validation = _training_input(session, tenant_id=tenant_id, file_id=request.validation_file,
                                     param="validation_file")
    except ApiError as error:
        raise _as_client_error(error) from None
    check_gpus(settings, request.gpus)
    _check_integrations(settings, request)
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    shown, run = methods.resolve(request=request, settings=settings, seed=seed)
    if parent_job is not None:
        parents.check_same_adapter(request, run, parent_job)
    check_fits_a_worker(settings=settings, request=request, run_config=run.model_dump(mode="json"))
    _check_split_leaves_rows(request, run.training.validation_split, training)
    _check_objective(request, dpo=run.dpo is not None, files={"training_file": training, "validation_file": validation})
    check_reinforcement_files(request, run, {"training_file": training, "validation_file": validation}, storage)
    if run.reinforcement is not None:
        check_judges(session, storage, settings, run.reinforcement.grader, tenant_id=tenant_id, tenant_name=tenant_name)
    _check_gguf_output(settings, base, run.outputs)
    evals = job_evals.resolve(session, tenant_id=tenant_id, eval_ids=request.evals)
    spec = JobSpec(run=run, base_model=BaseModelRef(source=registered.source, public_id=public_id(base, registered)),
                   training_file=training, validation_file=validation, evals=evals, parent=parent,
                   integrations=tuple(request.integrations or ()))
    try:
        check_active_jobs(session, settings=settings, tenant_id=tenant_id)  # holds the lock until the commit
        check_creation_rate(session, settings=settings, tenant_id=tenant_id)  # cancelled jobs count here
        if parent_job is not None:
            parents.check_still_there(session, parent_job=parent_job, model=request.model)
        job = job_store.create_job(
            session, tenant_id=tenant_id, model=base, training_file=request.training_file,
            validation_file=request.validation_file, method=shown, settings=spec.model_dump(mode="json"), seed=seed,
            suffix=request.suffix, metadata=request.metadata,
            max_attempts=request.max_attempts or settings.default_max_attempts,
            idempotency_key=idempotency_key, request_hash=request_hash, gpus=request.gpus)
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won the insert
        session.rollback()
        existing = _find_by_key(session, tenant_id=tenant_id, key=idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, request_hash), False
    return job, True


def _check_integrations(settings: Settings, request: JobCreate) -> None:
    """An integration logs to the operator's server of its type: one not configured here is a 400; a
    multi-GPU job's ranks (worker/ranks.py) do not feed the tracking sink yet, so it is refused."""
    if request.integrations and request.gpus > 1:
        raise bad_request("integrations are logged for one-GPU jobs only, for now: use gpus: 1 or no integrations",
                          param="integrations")
    for index, integration in enumerate(request.integrations or ()):
        if not settings.integration_configured(integration.type):
            setting = "DORA_WANDB_API_KEY" if integration.type == "wandb" else "DORA_MLFLOW_TRACKING_URI"
            raise bad_request(f"the {integration.type} integration is not configured on this server (the operator "
                              f"sets {setting})", param=f"integrations.{index}.type")


def _check_objective(request: JobCreate, *, dpo: bool, files: dict[str, FileRef | None]) -> None:
    """A DPO job trains on preference files, on one GPU; any other job on anything but preference
    files (the worker would fail either at once: dora_core/data/prepare.py checks the same)."""
    for param, file in files.items():
        if file is None or file.format is None:
            continue
        if dpo and file.format != PREFERENCE:
            raise bad_request(f"File {file.id} is in {file.format} format; a dpo job trains on preference rows "
                              "('input', 'preferred_output', 'non_preferred_output')", param=param,
                              code="invalid_file_format")
        if not dpo and file.format == PREFERENCE:
            raise bad_request(f"File {file.id} holds preference rows, which only a dpo job trains on (method type "
                              "'dpo')", param=param, code="invalid_file_format")
    if dpo and request.gpus > 1:
        raise bad_request("a dpo job runs on one GPU for now (its reference forward is not under DDP yet): "
                          "use gpus: 1", param="gpus")


def _check_split_leaves_rows(request: JobCreate, fraction: float, training: FileRef) -> None:
    """A validation_split that would hold out every row of the training file is refused now: the
    worker would fail the job on it (dora_core/data/split.py holds out round(fraction * rows),
    at least 1). The row count is the one the upload's validation stored."""
    if not fraction or training.rows is None:
        return
    if max(1, round(fraction * training.rows)) >= training.rows:
        raise bad_request(f"validation_split={fraction:g} of the {training.rows} row(s) of {training.id} leaves no "
                          "training rows: use a smaller fraction, more rows, or a validation file",
                          param=methods.param_of(request, "training", "validation_split"))


def _check_gguf_output(settings: Settings, model: str, outputs: tuple[str, ...]) -> None:
    """A gguf output on an architecture the export does not support is refused now, not after
    training. An architecture this process cannot read (a hub id) is left to the worker, which
    refuses it before training starts."""
    if "gguf" not in outputs:
        return
    architecture = registered_architecture(settings, model)
    if architecture is not None and (problem := gguf_unsupported_reason(architecture)):
        raise bad_request(f"outputs: {problem}; ask for adapter and merged instead", param="outputs",
                          code="unsupported_output")


def list_jobs(*, session: Session, tenant_id: str, after: str | None, limit: int, status: str | None,
              metadata: dict[str, str]) -> tuple[list[Job], bool]:
    query = owned(Job, tenant_id=tenant_id)
    if status is not None:
        if status not in set(JobStatus):
            raise bad_request(f"Invalid status '{status[:32]}': one of {', '.join(JobStatus)}", param="status")
        query = query.where(with_status(JobStatus(status)))
    for key, value in metadata.items():
        query = query.where(Job.meta[key].as_string() == value)
    return page(session, query, id_column=Job.id, after=after, limit=limit)


def cancel_job(*, session: Session, job: Job) -> Job:
    try:
        return job_store.cancel_job(session, job_id=job.id)
    except job_store.InvalidTransition as error:
        raise ApiError(409, str(error), param="fine_tuning_job_id", code="job_not_cancellable") from None


def pause_job(*, session: Session, job: Job) -> Job:
    """queued: paused at once; running: its worker checkpoints at the next step boundary and releases
    it paused. Anything else (ended, already paused or pausing, being cancelled) is a 400."""
    try:
        return job_store.pause_job(session, job_id=job.id)
    except job_store.InvalidTransition as error:
        raise bad_request(str(error), param="fine_tuning_job_id", code="job_not_pausable") from None


def resume_job(*, session: Session, settings: Settings, job: Job) -> Job:
    """paused -> queued (the caller publishes it after the commit). A paused job is not counted
    against the tenant's cap on active jobs, so resuming one is checked like creating one (429)."""
    if job.status != JobStatus.PAUSED:  # said before the quota check, which would hide it
        raise bad_request(f"job {job.id} is {job.status}, not paused: only a paused job can be resumed",
                          param="fine_tuning_job_id", code="job_not_resumable")
    check_active_jobs(session, settings=settings, tenant_id=job.tenant_id)  # holds the lock until the commit
    try:
        return job_store.resume_job(session, job_id=job.id)
    except job_store.InvalidTransition as error:
        raise bad_request(str(error), param="fine_tuning_job_id", code="job_not_resumable") from None


def list_events(*, session: Session, job: Job, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    return page(session, query, id_column=JobEvent.id, after=after, limit=limit)


def list_checkpoints(*, session: Session, job: Job, after: str | None, limit: int) -> tuple[list[Checkpoint], bool]:
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    return page(session, query, id_column=Checkpoint.id, after=after, limit=limit)


def list_metrics(*, session: Session, job: Job, after: int | None, limit: int) -> tuple[list[MetricPoint], bool]:
    """Metric points in step order, `limit` at a time after step `after`."""
    query = select(MetricPoint).where(MetricPoint.job_id == job.id)
    if after is not None:
        query = query.where(MetricPoint.step > after)
    rows = list(session.scalars(query.order_by(MetricPoint.step).limit(check_limit(limit, maximum=MAX_METRICS_LIMIT)
                                                                        + 1)))
    return rows[:limit], len(rows) > limit


def list_samples(*, session: Session, job: Job, after: str | None, limit: int,
                 step: int | None) -> tuple[list[JobSample], bool]:
    """The newest evaluation's samples first, each evaluation's in index order (the same prompts
    at every step); `after` is the id of the last sample of the previous page."""
    query = select(JobSample).where(JobSample.job_id == job.id)
    if step is not None:
        query = query.where(JobSample.step == step)
    if after is not None:
        cursor = session.scalars(select(JobSample).where(JobSample.job_id == job.id, JobSample.id == after)).first()
        if cursor is None:
            raise bad_request(f"No sample '{after[:64]}' in this job: pass the id of the last sample of the previous "
                              "page", param="after")
        query = query.where(or_(JobSample.step < cursor.step,
                                and_(JobSample.step == cursor.step, JobSample.index > cursor.index)))
    query = query.order_by(JobSample.step.desc(), JobSample.index.asc()).limit(check_limit(limit) + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def list_artifacts(*, session: Session, job: Job) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name)))


def get_artifact(*, session: Session, job: Job, name: str) -> Artifact:
    artifact = session.scalars(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name)).first()
    if artifact is None:
        raise _no_artifact(session, job, name)
    return artifact


def _no_artifact(session: Session, job: Job, name: str) -> ApiError:
    """Why a job has no artifact `name`: it has not finished yet (409: its outputs appear when it
    has succeeded), or it finished without one (404 naming the outputs it has)."""
    if job.status in ACTIVE:
        return ApiError(409, f"Job {job.id} is {job.status}: its outputs appear when it has succeeded; poll "
                             f"GET /v1/fine_tuning/jobs/{job.id} until status is succeeded, then download them",
                        code="job_not_finished")
    names = [artifact.name for artifact in list_artifacts(session=session, job=job)]
    has = f"its outputs are {', '.join(names)}" if names else "it has no outputs"
    return ApiError(404, f"No such artifact: '{name[:64]}': job {job.id} is {job.status} and {has}",
                    code="artifact_not_found")


def artifact_file(*, artifact: Artifact, path: str) -> dict:
    entry = next((f for f in artifact.files if f["path"] == path), None)
    if entry is None:
        raise not_found("artifact file", path)
    return entry
