"""The settings of worker/'s processes: the GPU worker (with its reconciler) and the webhook sender.

Each composite is the groups of store/settings.py its process reads, plus the groups below that
only it reads; same `DORA_*` variables as every other process, e.g.
`DORA_WORK_DIR=/scratch/dora DORA_LEASE_SECONDS=120 DORA_HEARTBEAT_SECONDS=15`.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from store.settings import (
    BaseModelSettings,
    DoraSettings,
    EvalSettings,
    GraderSettings,
    InferenceSettings,
    LogSettings,
    SessionSettings,
    StorageSettings,
    TrackingSettings,
    WebhookTargetSettings,
)


class JobHostSettings(DoraSettings):
    """The worker's host: where jobs run, on which device, how many GPUs (the model cache is BaseModelSettings')."""

    work_dir: str = Field("./var/work", description=(
        "local disk: one folder per job (inputs, checkpoints, outputs); a retried attempt on the same host "
        "resumes from the checkpoints left here, another host downloads the newest from storage"))
    device: str | None = Field(None, description="unset: the first CUDA GPU when there is one, else the CPU")
    gpus: PositiveInt | None = Field(None, description=(
        "GPUs of this worker (worker/gpus.py): it takes jobs needing up to this many; unset: every visible CUDA "
        "device (one on a CPU host). `dora worker --gpus` sets it, once, for its job processes"))


class LeaseSettings(DoraSettings):
    """A running job's lease in SQL: a dead worker's job is reclaimed once it expires."""

    lease_seconds: int = Field(120, description="a job's lease; a worker that stops renewing it loses the job")
    heartbeat_seconds: float = Field(15.0, description=(
        "a side thread renews the lease this often, and every optimiser step renews it too (that is also when "
        "cancellation is read: within one step); at most half of DORA_LEASE_SECONDS"))
    progress_buffer_steps: int = Field(10_000, description=(
        "metric points (a few hundred bytes each) a job keeps in memory while the database is unreachable, to "
        "write once it is back (worker/lease.py); past it the oldest are dropped, and an event says how many"))
    progress_buffer_events: int = Field(1_000, description="events kept the same way")

    @model_validator(mode="after")
    def _check_lease(self) -> LeaseSettings:
        if self.heartbeat_seconds <= 0 or self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError("DORA_HEARTBEAT_SECONDS must be positive and at most half of DORA_LEASE_SECONDS")
        if self.progress_buffer_steps < 1 or self.progress_buffer_events < 1:
            raise ValueError("DORA_PROGRESS_BUFFER_STEPS and DORA_PROGRESS_BUFFER_EVENTS must be at least 1")
        return self


class ReconcilerSettings(DoraSettings):
    """The reconciler: every interval it settles abandoned jobs and re-publishes queued jobs that no
    worker claimed and running jobs whose lease expired."""

    reconcile_interval_seconds: float = Field(15.0, description="0 disables the reconciler `dora worker` starts "
                                                                "(`dora reconcile` runs it alone)")
    requeue_after_seconds: float = Field(300.0, description="a queued job nobody claimed this long is published "
                                                            "again")


class CelerySettings(DoraSettings):
    """The GPU worker's Celery process."""

    job_time_limit_seconds: int = Field(7 * 24 * 3600, description=(
        "a job running longer fails with a clear error; Redis' visibility timeout is set an hour above it"))
    concurrency: int = Field(1, description="jobs at once: one per GPU, so run one worker per GPU rather than "
                                            "raising this")
    preload_ml: bool = Field(True, description="import torch in the worker's parent (never CUDA) so each job "
                                               "starts faster")

    @model_validator(mode="after")
    def _check_celery(self) -> CelerySettings:
        if self.job_time_limit_seconds <= 0:
            raise ValueError("DORA_JOB_TIME_LIMIT_SECONDS must be positive")
        return self

    @property
    def visibility_timeout(self) -> int:
        """Redis re-delivers an unacknowledged message after this long: above any job's time limit,
        so a long job is never handed to a second worker by the broker (SQL leases do that)."""
        return self.job_time_limit_seconds + 3600


class WebhookDeliverySettings(DoraSettings):
    """How `dora webhooks` sends deliveries (worker/webhooks.py): a failed delivery is tried again
    after each retry delay in turn (about 22 h in all by default), then marked failed."""

    webhook_retry_schedule_seconds: list[PositiveFloat] = Field(
        default_factory=lambda: [5, 30, 120, 600, 3600, 3 * 3600, 6 * 3600, 12 * 3600], min_length=1,
        description="the delays before each retry")
    webhook_timeout_seconds: PositiveFloat = Field(10.0, description=(
        "one attempt, from resolving the host to the response"))
    webhook_sweep_interval_seconds: PositiveFloat = Field(5.0, description=(
        "how often due deliveries are published (retries, lost messages)"))
    webhook_republish_after_seconds: PositiveFloat = Field(60.0, description=(
        "a published delivery not attempted by then is published again, once the `webhooks` queue is empty (its "
        "message was lost, not waiting its turn: a backlog is never duplicated)"))
    webhook_concurrency: int = Field(8, ge=1, description="attempts at once in one `dora webhooks`")
    webhook_max_in_flight_per_endpoint: int = Field(2, ge=1, description=(
        "attempts at once to one webhook, in one `dora webhooks`; a delivery over it is deferred to a later sweep "
        "(it holds no thread), and the sweeper keeps at most this many deliveries of one webhook published"))
    webhook_max_in_flight_per_tenant: int = Field(4, ge=1, description=(
        "attempts at once to one tenant's webhooks, in one `dora webhooks`; below DORA_WEBHOOK_CONCURRENCY, so "
        "slow or failing receivers of one tenant never take every thread from the others"))
    webhook_breaker_failures: int = Field(20, ge=0, description=(
        "failed attempts in a row to one webhook (counted by each `dora webhooks`) that open its circuit breaker: "
        "its pending deliveries are failed (each gets an attempt saying why, and the log a warning) and new "
        "events wait for the cool-down; above the retry schedule's length, so one event alone never opens it; "
        "0: no breaker"))
    webhook_breaker_cooldown_seconds: PositiveFloat = Field(600.0, description=(
        "how long an open breaker holds a webhook's new events; then they are tried again: a 2xx closes it, a "
        "failure opens it once more"))


class EvalExecutionSettings(DoraSettings):
    """How `dora evals` executes eval runs (worker/evals.py, worker/eval_run.py): each run under a
    lease, its items in batches, their completions sent to the inference servers at once."""

    eval_concurrency: int = Field(4, ge=1, description="eval runs at once in one `dora evals` (a thread each)")
    eval_completion_concurrency: int = Field(8, ge=1, description=(
        "completions one run has in flight at once (the inference server batches them)"))
    eval_batch_items: int = Field(32, ge=1, description=(
        "items sampled and graded together, then stored in one transaction; a cancel request is seen, and a "
        "shutdown gives the run back, between batches; a killed executor redoes at most one batch"))
    eval_lease_seconds: float = Field(60.0, gt=0, description=(
        "an eval run's lease: when its executor stops renewing it (killed), the run is taken again after this "
        "and resumes with the items not stored yet"))
    eval_heartbeat_seconds: float = Field(10.0, gt=0, description=(
        "how often a running eval run renews its lease and rewrites its counts; at most half of "
        "DORA_EVAL_LEASE_SECONDS"))
    eval_sweep_interval_seconds: float = Field(10.0, gt=0, description=(
        "how often `dora evals` publishes runs again whose executor died (lease expired) or whose message was "
        "lost, and settles the ones that may not run again"))
    eval_requeue_after_seconds: float = Field(60.0, gt=0, description=(
        "a queued eval run nobody claimed this long is published again"))
    eval_server_wait_seconds: float = Field(60.0, ge=0, description=(
        "how long a run waits for an inference server of its model (none running, busy or lost) before it "
        "fails with that error"))

    @model_validator(mode="after")
    def _check_eval_lease(self) -> EvalExecutionSettings:
        if self.eval_heartbeat_seconds * 2 > self.eval_lease_seconds:
            raise ValueError("DORA_EVAL_HEARTBEAT_SECONDS must be at most half of DORA_EVAL_LEASE_SECONDS")
        return self


class TrainingJudgeSettings(DoraSettings):
    """A reinforcement job's model graders (worker/training_judge.py): their judge is asked through the
    inference servers (InferenceSettings), as `dora evals` asks it."""

    judge_server_wait_seconds: float = Field(60.0, ge=0, description=(
        "how long a reinforcement job waits for an inference server of its grader's judge model (none running, "
        "busy or lost) before it fails naming the judge; the job holds its GPU meanwhile"))


class WorkerSettings(SessionSettings, StorageSettings, LogSettings, BaseModelSettings, EvalSettings, GraderSettings,
                     InferenceSettings, TrainingJudgeSettings, JobHostSettings, LeaseSettings, ReconcilerSettings,
                     CelerySettings, TrackingSettings):
    """What the GPU worker loads: `dora worker`, its job processes and reconciler, `dora reconcile`; the
    inference servers' secret and registry for a reinforcement job's judge."""


class WebhookSenderSettings(SessionSettings, LogSettings, WebhookTargetSettings, WebhookDeliverySettings):
    """What the webhook sender loads (`dora webhooks`)."""


class EvalRunnerSettings(SessionSettings, StorageSettings, LogSettings, BaseModelSettings, GraderSettings,
                         InferenceSettings, EvalExecutionSettings):
    """What the eval executor loads (`dora evals`): no GPU, no model, HTTP to the inference servers; the
    registered base names (a judge's model resolved as the API does) and whether python graders run."""


@lru_cache
def get_worker_settings() -> WorkerSettings:
    """The worker process's settings, read once from the environment."""
    return WorkerSettings()
