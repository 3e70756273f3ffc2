"""How stored rows are shown: ORM rows -> OpenAI-shaped response models (plus our additions).

A job's outputs and OpenAI hyperparameters come from its stored `JobSpec` (dora_contract), read
through the model like the worker reads it: the hyperparameters are derived from the run, not stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.schemas.files import FileObject
from api.schemas.jobs import (
    ArtifactOut,
    CheckpointOut,
    FineTuningJob,
    JobEventOut,
    JobSampleOut,
    MetricPointOut,
    Progress,
)
from dora_contract import JobSpec, RunSettings, TrainingSettings
from store.jobs import JobStatus, fine_tuned_model_name
from store.models import Artifact, Checkpoint, File, Job, JobEvent, JobSample, MetricPoint

# what OpenAI's learning_rate_multiplier multiplies, shown here and read from requests in services/methods.py
DEFAULT_LEARNING_RATE = TrainingSettings.model_fields["learning_rate"].default


def ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def file_out(row: File) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=ts(row.created_at), filename=row.filename,
                      purpose=row.purpose, status=row.status, format=row.format, rows=row.rows, sha256=row.sha256)


def progress(job: Job, *, now: datetime | None = None) -> Progress:
    """Percent from steps; ETA from this attempt's pace (steps since its start or resume point)."""
    total, step = job.total_steps, job.step or 0
    percent = round(100.0 * step / total, 2) if total else (100.0 if job.status == JobStatus.SUCCEEDED else None)
    eta = None
    done_this_attempt = step - (job.resumed_from_step or 0)
    if job.status == JobStatus.RUNNING and total and job.attempt_started_at and done_this_attempt > 0:
        elapsed = ((now or datetime.now(UTC)) - job.attempt_started_at).total_seconds()
        eta = round(max(0.0, elapsed / done_this_attempt * (total - step)), 1)
    return Progress(step=step, total_steps=total, epoch=job.epoch, percent=percent, eta_seconds=eta)


def openai_hyperparameters(run: RunSettings) -> dict[str, Any]:
    """OpenAI's top-level `hyperparameters` of a job: its three knobs, resolved (api/services/methods.py
    shows them in a supervised job's method too)."""
    return {"n_epochs": run.training.epochs, "batch_size": run.training.micro_batch_size,
            "learning_rate_multiplier": run.training.learning_rate / DEFAULT_LEARNING_RATE}


def job_out(job: Job) -> FineTuningJob:
    prog = progress(job)
    spec = JobSpec.from_data(job.settings)
    estimated = int(datetime.now(UTC).timestamp() + prog.eta_seconds) if prog.eta_seconds is not None else None
    error = None
    if job.error:
        error = {"code": job.error.get("code", "error"), "message": job.error.get("message", ""),
                 "param": job.error.get("param")}
    return FineTuningJob(
        id=job.id, created_at=ts(job.created_at), error=error, fine_tuned_model=job.fine_tuned_model,
        finished_at=ts(job.finished_at), hyperparameters=openai_hyperparameters(spec.run),
        model=job.model, organization_id=job.tenant_id, result_files=list(job.result_files or []), seed=job.seed,
        status=job.status, trained_tokens=job.trained_tokens, training_file=job.training_file,
        validation_file=job.validation_file, estimated_finish=estimated, metadata=job.meta, method=job.method,
        suffix=job.suffix, outputs=list(spec.run.outputs), progress=prog, attempt=job.attempt,
        max_attempts=job.max_attempts, gpus=job.gpus, resumed_from_step=job.resumed_from_step,
        cancel_requested=job.cancel_requested, pause_requested=job.pause_requested,
        evals=[e.eval_id for e in spec.evals],
        integrations=[i.model_dump(mode="json", exclude_none=True) for i in spec.integrations],
    )


def event_out(row: JobEvent) -> JobEventOut:
    return JobEventOut(id=row.id, created_at=ts(row.created_at), level=row.level, message=row.message,
                       type=row.type, data=row.data)


def checkpoint_out(row: Checkpoint, job: Job, *, tenant_name: str) -> CheckpointOut:
    name = fine_tuned_model_name(model=job.model, tenant_name=tenant_name, suffix=job.suffix, job_id=job.id,
                                 step=row.step)
    return CheckpointOut(id=row.id, created_at=ts(row.created_at), fine_tuned_model_checkpoint=name,
                         fine_tuning_job_id=job.id, metrics={"step": row.step, **(row.metrics or {})},
                         step_number=row.step)


def metric_out(row: MetricPoint) -> MetricPointOut:
    return MetricPointOut(step=row.step, epoch=row.epoch, created_at=ts(row.created_at), values=row.values or {})


def sample_out(row: JobSample) -> JobSampleOut:
    return JobSampleOut(id=row.id, created_at=ts(row.created_at), step=row.step, index=row.index, prompt=row.prompt,
                        expected=row.expected, answer=row.answer)


def artifact_out(row: Artifact) -> ArtifactOut:
    return ArtifactOut(id=row.id, name=row.name, bytes=row.bytes, sha256=row.sha256, file_id=row.file_id,
                       created_at=ts(row.created_at), files=row.files,
                       download_url=f"/v1/fine_tuning/jobs/{row.job_id}/artifacts/{row.name}/archive")
