"""Deleting a fine-tuned model (`DELETE /v1/models/{id}`): the rows it takes and the order it runs in.

The job row stays (its history: status, events, metrics) with `model_deleted_at` set; every read
that names a model skips such a job (GET /v1/models, completions, downloads). Deletion runs in
three steps so that no step leaves a model that answers with missing files, and a failure can be
retried:
1. under the tenant's lock (store/quotas.py): refuse when an active job continues from the model
   (or one of its checkpoints), else set `model_deleted_at` and commit: the model is gone for reads;
2. remove the job's whole storage folder (`tenants/<t>/jobs/<job>/`: outputs of every attempt and
   checkpoints), outside any transaction;
3. delete its artifact, result-file and checkpoint rows, which frees the tenant's stored bytes
   (results count, store/quotas.py `stored_bytes`) only once the bytes are really gone.
A failure in 2 leaves the rows: `deletable` still finds the job, so the same DELETE can run again;
after 3 it is a 404.
"""

from __future__ import annotations

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.orm import Session

from store.job_status import ACTIVE, JobStatus
from store.models import Artifact, Checkpoint, File, Job, utcnow


def _has_leftovers(job_id: str):
    return or_(exists().where(Artifact.job_id == job_id), exists().where(Checkpoint.job_id == job_id))


def deletable(session: Session, *, tenant_id: str, model: str) -> Job | None:
    """The tenant's succeeded job whose model is `model`, not yet deleted (or whose deletion did not
    finish: its rows are still there)."""
    query = select(Job).where(Job.fine_tuned_model == model, Job.tenant_id == tenant_id,
                              Job.status == JobStatus.SUCCEEDED.value)
    for job in session.scalars(query):
        if job.model_deleted_at is None or session.scalar(select(_has_leftovers(job.id))):
            return job
    return None


def active_job_continuing_from(session: Session, *, tenant_id: str, job_id: str) -> str | None:
    """An active (queued, running or paused) job of the tenant that continues the model `job_id` trained
    or one of its checkpoints (its JobSpec's `parent.job_id`, dora_contract/job_spec.py ParentRef), if any."""
    parent_job = Job.settings["parent"]["job_id"].as_string()  # JSON path: json_extract / ->> on PostgreSQL
    query = select(Job.id).where(Job.tenant_id == tenant_id, Job.status.in_(sorted(ACTIVE)), parent_job == job_id)
    return session.scalars(query.limit(1)).first()


def mark_deleted(session: Session, *, job: Job) -> None:
    """Step 1's write (the caller holds the tenant's lock and commits)."""
    if job.model_deleted_at is None:
        job.model_deleted_at = utcnow()


def forget_outputs(session: Session, *, job_id: str) -> None:
    """Step 3: the job's artifact rows, their `fine-tune-results` files and its checkpoint rows; commits."""
    artifact_ids = select(Artifact.id).where(Artifact.job_id == job_id)
    session.execute(delete(File).where(File.artifact_id.in_(artifact_ids)), execution_options={
        "synchronize_session": False})
    session.execute(delete(Artifact).where(Artifact.job_id == job_id), execution_options={
        "synchronize_session": False})
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id), execution_options={
        "synchronize_session": False})
    job = session.get(Job, job_id)
    if job is not None:
        job.result_files = []
    session.commit()
