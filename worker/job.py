"""Running one job on this worker: claim, fetch inputs, train under a lease, store outputs, finish.

`run_job(job_id)` is the whole task body. What it returns says what happened:
  skipped    no row changed by the claim (finished, cancelled, running elsewhere, at its cap):
             the message was a duplicate or stale, and is simply acknowledged
  succeeded / failed / cancelled   the final status this attempt wrote while holding the lease
  released   the job went back to the queue for another attempt (a retryable error, a shutdown)
  paused     a user paused it: a checkpoint at the step reached, the job released `paused` (not
             published; POST .../resume queues it again). The work folder stays, as for a release
  lost       another attempt took the job over, or the database was unreachable for most of the
             lease; this one wrote nothing more
  deferred   the worker stopped while waiting for an unreachable database to claim the job;
             the message is handed back (published again)

The local work folder (`DORA_WORK_DIR/<job id>`) survives a crash, so an attempt retried on
the same host resumes from the checkpoints left there; checkpoints are also uploaded, so an
attempt on another host downloads the newest one. Either way the job's events say where it
resumed from.

A job needing N > 1 GPUs trains as N ranks of one torch.distributed run, child processes of this
one (worker/ranks.py); everything else here (claim, lease, outputs, final status) is the same.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from dora_contract import BaseModelRef, FileRef, JobSpec
from dora_contract.job_spec import ParentRef
from dora_contract.serving import ADAPTER_FILES
from store import jobs as job_store
from store.base_models import BaseModelSource, public_id, registration
from store.db import session_scope
from store.jobs import ArtifactSpec, JobError, JobStatus
from store.models import Job
from store.queue import publish_job
from store.storage import Storage, job_key, open_storage
from store.transfer import download_file, download_folder, download_named_files, upload_folder
from worker.database import call_when_reachable, unreachable
from worker.failures import Failure, describe, exhausted
from worker.gpus import worker_gpus
from worker.lease import Lease, LeaseGone, LeaseKeeper
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def worker_identity() -> str:
    """Who holds a lease: host and process id (a fresh process runs each job)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(job_id: str, *, settings: WorkerSettings, storage: Storage | None = None,
            publish: Callable[[str, int], bool] | None = None, stop_requested: Callable[[], bool] = lambda: False,
            received_for_gpus: int = 1) -> str:
    """`publish(job_id, gpus)` hands a job back to its queue; `received_for_gpus` is the GPU count
    of the queue this message came from (where a message handed back unclaimed goes)."""
    owner = worker_identity()
    gpus = worker_gpus(settings.gpus)

    def claim():
        with session_scope(settings) as session:
            return job_store.claim_job(session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds,
                                       max_gpus=gpus)

    try:  # a database that is down is waited for: this message is the job's only wake-up call
        job = call_when_reachable(claim, what=f"job {job_id}: claim", stopped=stop_requested, first=0.5, most=5.0)
    except Exception as error:
        if not unreachable(error):
            raise
        log.warning("job %s: not claimed (the database is unreachable and the worker is stopping); "
                    "handing the message back", job_id)
        publish = publish or _publisher(settings)
        publish(job_id, received_for_gpus)
        return "deferred"
    if job is None:
        log.info("job %s: not claimed (finished, cancelled, held by a live attempt, at its attempt cap, or needing "
                 "more than this worker's %d GPUs); message dropped", job_id, gpus)
        return "skipped"
    log.info("job %s: attempt %s of %s claimed by %s", job_id, job.attempt, job.max_attempts, owner)
    storage = storage or open_storage(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
    publish = publish or _publisher(settings)
    started = time.monotonic()
    outcome = JobAttempt(settings, job, owner, storage, publish, stop_requested).run()
    log.info("job %s: attempt %s %s after %.1fs", job_id, job.attempt, outcome, time.monotonic() - started)
    return outcome


def _publisher(settings: WorkerSettings) -> Callable[[str, int], bool]:
    return lambda job_id, gpus: publish_job(job_id, broker_url=settings.broker_url, gpus=gpus)


class JobAttempt:
    def __init__(self, settings: WorkerSettings, job: Job, owner: str, storage: Storage,
                 publish: Callable[[str, int], bool], stop_requested: Callable[[], bool]) -> None:
        self.settings, self.job, self.storage = settings, job, storage
        self.publish, self.stop_requested = publish, stop_requested
        self.lease = Lease(settings, job.id, owner, job.attempt)
        self.owner = owner
        self.folder = Path(settings.work_dir) / job.id

    @cached_property
    def evals(self):
        """The job's evals, run on each checkpoint and on the fine-tuned model (None: it names none)."""
        from worker.job_evals import job_evals

        return job_evals(self.settings, self.job, self.spec.evals)

    def run(self) -> str:
        try:
            with LeaseKeeper(self.lease, self.settings.heartbeat_seconds):
                result = self.train()
                artifacts = self.store_outputs(result.outputs) if result.status != "stopped" else []
        except Exception as error:  # noqa: BLE001 - every failure becomes a readable job error
            return self.fail(error)
        if result.status == "stopped":
            return self.stopped()
        return self.succeed(artifacts, step=result.step)

    # -- before training ---------------------------------------------------------------------
    def train(self):
        from dora_core.training import run_training
        from worker.progress import JobProgress

        config = self.build_config()
        if self.job.gpus > 1:
            return self.train_in_ranks(config)
        grading = self.grading_context()  # before the tracking, which only the finally below closes
        tracking = self.tracking()
        self.progress = JobProgress(lease=self.lease, storage=self.storage, tenant_id=self.job.tenant_id,
                                    heartbeat_seconds=self.settings.heartbeat_seconds,
                                    keep_checkpoints=config.training.keep_checkpoints,
                                    stop_requested=self.stop_requested,
                                    metrics_file=self.folder / "run" / "metrics.jsonl", evals=self.evals,
                                    tracking=tracking)
        try:
            return run_training(config, self.folder / "run", callbacks=[self.progress], device=self.settings.device,
                                grading=grading)
        finally:
            if grading.complete is not None:
                grading.complete.close()
            if tracking is not None:  # waits at most DORA_TRACKING_FLUSH_SECONDS; an event says what was lost
                tracking.close(self.progress.on_event)

    def tracking(self):
        """The job's integrations (W&B, MLflow) as sinks fed by its progress; None when it names none.
        Multi-GPU jobs (train_in_ranks) are not tracked yet."""
        if not self.spec.integrations:
            return None
        from worker.tracking import JobTracking, TrackingSink
        from worker.tracking_backends import backend_for

        config = {"job_id": self.job.id, "model": self.job.model, "seed": self.job.seed,
                  **self.spec.run.model_dump(mode="json")}
        return JobTracking([
            TrackingSink(backend_for(integration, self.settings, job_id=self.job.id, base_model=self.job.model,
                                     config=config),
                         buffer_points=self.settings.tracking_buffer_points,
                         flush_seconds=self.settings.tracking_flush_seconds)
            for integration in self.spec.integrations])

    def grading_context(self):
        """What a reinforcement run's grader is lent: the python sandbox where the operator enabled it, and
        for a score_model or label_model a judge of the job's tenant's models, asked through the inference
        servers (worker/training_judge.py: one that cannot answer fails the job); close its `complete` after."""
        from dora_graders import GradingContext, PythonSandbox, asks_a_judge
        from worker.training_judge import TrainingJudge, tenant_name

        python = PythonSandbox() if self.settings.python_grader_enabled else None
        reinforcement = self.spec.run.reinforcement
        if reinforcement is None or not asks_a_judge(reinforcement.grader):
            return GradingContext(python=python)
        judge = TrainingJudge(self.settings, self.storage, tenant_id=self.job.tenant_id,
                              tenant_name=self.lease.read(tenant_name),
                              give_up=lambda: not self.lease.held or self.lease.cancel_requested)
        return GradingContext(complete=judge, python=python)

    def train_in_ranks(self, config):
        """The run as `job.gpus` ranks (worker/ranks.py): rank 0 reports on its own lease object,
        so this process's lease learns what rank 0 wrote (a cancel) by writing once more after."""
        from torch.distributed.elastic.multiprocessing.api import SignalException

        from dora_core.training import RunResult
        from dora_core.training.processes import train_in_processes
        from worker.ranks import RankProgress, children_allowed, stop_relay

        with children_allowed(), stop_relay(self.stop_requested, self.folder) as stop_file:
            factory = RankProgress(settings=self.settings, job_id=self.job.id, owner=self.owner,
                                   attempt=self.job.attempt, tenant_id=self.job.tenant_id,
                                   keep_checkpoints=config.training.keep_checkpoints,
                                   metrics_file=self.folder / "run" / "metrics.jsonl", stop_file=stop_file,
                                   evals=self.evals)
            try:
                result = train_in_processes(self.job.gpus, config, self.folder / "run", device=self.settings.device,
                                            callbacks=factory)
            except SignalException as signalled:  # SIGTERM to this process: the launcher stopped every rank
                log.warning("job %s: %s; giving the job back", self.job.id, signalled)
                result = RunResult(status="stopped", step=0, total_steps=0, resumed_from_step=None)
        self.lease.flush()
        return result

    @cached_property
    def spec(self) -> JobSpec:
        """The job's stored settings, read through the model only: an invalid or incomplete spec
        is a SettingError naming the field (the job fails at once), read in the attempt's try."""
        return JobSpec.from_data(self.job.settings)

    def build_config(self):
        from dora_core.training import RunConfig

        spec = self.spec
        train = self.fetch_input(spec.training_file, "train.jsonl")  # the API accepts JSONL only
        validation = self.fetch_input(spec.validation_file, "validation.jsonl") if spec.validation_file else None
        self.restore_checkpoint(self.folder / "run" / "checkpoints")
        base_model, public = self.base_model_source(spec.base_model)
        return RunConfig.from_dict(spec.run.model_dump() | {
            "base_model": base_model, "base_model_id": public, "train_file": str(train),
            "validation_file": str(validation) if validation else None,
            "init_adapter": str(self.fetch_parent(spec.parent)) if spec.parent else None})

    def fetch_parent(self, parent: ParentRef) -> Path:
        """A continued job's starting adapter: only its PEFT files (not a checkpoint's optimizer state).
        Gone from storage (the model deleted, the checkpoint pruned) is an error naming the parent."""
        try:
            folder = download_named_files(self.storage, parent.storage_prefix, ADAPTER_FILES,
                                          self.folder / "inputs" / "parent")
        except FileNotFoundError:
            from dora_core.training.errors import TrainingError

            raise TrainingError(f"the adapter of '{parent.model}', which this job continues, is no longer in storage "
                                "(its model was deleted or the checkpoint pruned)") from None
        self.lease.event(f"Starting from the adapter of {parent.model}", data={"parent_job": parent.job_id,
                                                                               "parent_step": parent.step})
        return folder

    def base_model_source(self, stored: BaseModelRef) -> tuple[str, str]:
        """(local folder or hub id to load, public id for the adapter). The operator's current
        registration wins over the one stored at job creation; a GGUF source is converted here
        once per machine (cached by content hash), under the lease's heartbeat."""
        from dora_core.gguf_import import resolve_model_source

        registered = registration(self.settings, self.job.model) or BaseModelSource(source=stored.source)
        local = resolve_model_source(registered.source, cache_dir=self.settings.model_cache_dir)
        return local, stored.public_id or public_id(self.job.model, registered)

    def fetch_input(self, file: FileRef, name: str) -> Path:
        return download_file(self.storage, file.storage_key, self.folder / "inputs" / name)

    def restore_checkpoint(self, checkpoints: Path) -> None:
        """Download the newest registered checkpoint when this host has none as new (another host wrote it)."""
        from dora_core.training.checkpoints import checkpoint_name, list_checkpoints

        latest = self.lease.read(job_store.latest_checkpoint)  # waits for the database, within the lease
        local = list_checkpoints(checkpoints)
        if latest is None or (local and local[-1][0] >= latest.step):
            return
        try:
            download_folder(self.storage, latest.storage_key, checkpoints / checkpoint_name(latest.step))
        except Exception as error:  # noqa: BLE001 - an older checkpoint (or none) still gives a correct run
            log.warning("job %s: could not download checkpoint %s: %s", self.job.id, latest.storage_key, error)
            self.lease.event(f"The checkpoint at step {latest.step} could not be fetched from storage; "
                             "continuing from an older one", level="warning")
            return
        self.lease.event(f"Fetched the checkpoint at step {latest.step} (written by attempt {latest.attempt}) "
                         "from storage", data={"step": latest.step})

    # -- after training ----------------------------------------------------------------------
    def store_outputs(self, outputs: dict[str, str]) -> list[ArtifactSpec]:
        """Upload each requested output folder under this attempt's own prefix (a stale attempt
        can never mix its files into them); only the attempt that finishes registers its set."""
        specs = []
        for name in self.spec.run.outputs:
            prefix = job_key(self.job.tenant_id, self.job.id, "outputs", f"attempt-{self.job.attempt}", name)
            files = upload_folder(self.storage, Path(outputs[name]), prefix)
            specs.append(ArtifactSpec(name=name, storage_prefix=prefix, files=files))
        return specs

    # Each write from here on waits for an unreachable database, within the lease (worker/lease.py);
    # False from one means the lease is gone and nothing was written.
    def succeed(self, artifacts: list[ArtifactSpec], *, step: int) -> str:
        tokens = self.lease.trained_tokens()
        if tokens is None or not self.lease.finish(JobStatus.SUCCEEDED, trained_tokens=tokens, artifacts=artifacts):
            self.remove_outputs(self.job.attempt)
            return "lost"
        ended = self.ended_as(JobStatus.SUCCEEDED)
        if ended == JobStatus.CANCELLED:  # cancelled before the write: nothing was registered
            self.remove_outputs(self.job.attempt)
        for attempt in range(1, self.job.attempt):  # what earlier attempts may have half-uploaded
            self.remove_outputs(attempt)
        self.remove_work_folder()
        if ended == JobStatus.SUCCEEDED and self.evals is not None:
            adapter = next((a.storage_prefix for a in artifacts if a.name == "adapter"), None)
            self.evals.for_fine_tuned_model(step=step, adapter_prefix=adapter, event=self.finished_event)
        return str(ended)

    def finished_event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        """An event of the finished job (no lease fences it any more); logged when the database is away."""
        from store.job_evals import add_job_event

        try:
            with session_scope(self.settings) as session:
                add_job_event(session, job_id=self.job.id, message=message, level=level, data=data)
        except Exception as error:  # noqa: BLE001 - the job has succeeded whatever happens here
            log.warning("job %s: could not record the event %r: %s", self.job.id, message, error)

    def ended_as(self, meant: JobStatus) -> JobStatus:
        """What the final write wrote: `meant`, or cancelled when a cancel was asked before it
        (store/jobs.py finish_job: a cancel the API accepted always takes effect)."""
        try:
            return self.lease.read(job_store.status_of)
        except LeaseGone:  # the database stayed away: the job ended one way or the other
            log.warning("job %s: could not read the final status back", self.job.id)
            return meant

    def stopped(self) -> str:
        if not self.lease.held:
            return "lost"
        if self.lease.cancel_requested:
            if not self.lease.finish(JobStatus.CANCELLED):
                return "lost"
            self.remove_work_folder()
            return "cancelled"
        if self.lease.pause_requested:  # checkpointed at the step reached; waits for a resume, unpublished
            return "paused" if self.lease.release("paused by the user") else "lost"
        return self.release("The worker is shutting down; the job will resume from its newest checkpoint")

    def fail(self, error: Exception) -> str:
        failure: Failure = describe(error, training_file=self.job.training_file,
                                    time_limit=self.settings.job_time_limit_seconds)
        if not self.lease.held or isinstance(error, LeaseGone):
            log.warning("job %s: attempt %s ended after losing its lease: %s", self.job.id, self.job.attempt, error)
            return "lost"
        if failure.retry:
            log.error("job %s: attempt %s failed", self.job.id, self.job.attempt, exc_info=error)
        else:
            log.warning("job %s: failed: %s", self.job.id, failure.message)
        if failure.retry and self.job.attempt < self.job.max_attempts and not self.lease.cancel_requested:
            return self.release(f"Attempt {self.job.attempt} failed: {failure.message}; it will be retried "
                                f"(attempt {self.job.attempt + 1} of {self.job.max_attempts})")
        if failure.retry:
            failure = exhausted(failure, attempts=self.job.attempt)
        if not self.lease.finish(JobStatus.FAILED,
                                 error=JobError(code=failure.code, message=failure.message, param=failure.param)):
            return "lost"
        self.remove_work_folder()
        return str(self.ended_as(JobStatus.FAILED))  # cancelled, when a cancel was asked

    def release(self, reason: str) -> str:
        if not self.lease.release(reason):
            return "lost"
        if not self.publish(self.job.id, self.job.gpus):
            log.warning("job %s: released but not published; the reconciler will publish it", self.job.id)
        return "released"

    def remove_outputs(self, attempt: int) -> None:
        try:
            self.storage.delete_prefix(job_key(self.job.tenant_id, self.job.id, "outputs", f"attempt-{attempt}"))
        except Exception as error:  # noqa: BLE001 - housekeeping
            log.warning("job %s: could not remove outputs of attempt %s: %s", self.job.id, attempt, error)

    def remove_work_folder(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
