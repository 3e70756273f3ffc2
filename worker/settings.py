"""The worker's settings: the service's `Settings` plus what only a worker host needs.

Same `DORA_*` environment variables as every other process (store/settings.py); the extra
ones below are read by `dora worker`, `dora reconcile` and `dora up`, e.g.
`DORA_WORK_DIR=/scratch/dora DORA_LEASE_SECONDS=120 DORA_HEARTBEAT_SECONDS=15`.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import PositiveInt, model_validator

from store.settings import Settings


class WorkerSettings(Settings):
    # local disk: one folder per job (inputs, checkpoints, outputs); a retried attempt on the same
    # host resumes from the checkpoints left here, another host downloads the newest from storage
    work_dir: str = "./var/work"
    device: str | None = None  # None: the first CUDA GPU when there is one, else the CPU
    # GPUs of this worker (worker/gpus.py): it takes jobs needing up to this many; None: every
    # visible CUDA device (one on a CPU host). `dora worker` resolves it once, for its job processes.
    gpus: PositiveInt | None = None

    # liveness (lease_seconds is in Settings): a side thread renews the lease this often, and every
    # optimiser step renews it too (that is also when cancellation is read: within one step)
    heartbeat_seconds: float = 15.0
    # while the database is unreachable, a job keeps this much progress in memory to write once it
    # is back (worker/lease.py); past it the oldest is dropped, and an event says how many steps
    progress_buffer_steps: int = 10_000  # metric points (a few hundred bytes each)
    progress_buffer_events: int = 1_000

    # the reconciler: every interval it settles abandoned jobs and re-publishes queued jobs that
    # no worker claimed for requeue_after_seconds and running jobs whose lease expired
    reconcile_interval_seconds: float = 15.0  # 0 disables the reconciler `dora worker` starts
    requeue_after_seconds: float = 300.0

    # Celery
    job_time_limit_seconds: int = 7 * 24 * 3600  # a job running longer fails with a clear error
    concurrency: int = 1  # one job per GPU: run one worker per GPU rather than raising this
    preload_ml: bool = True  # import torch in the worker's parent (never CUDA) so each job starts faster

    @model_validator(mode="after")
    def _check_worker_limits(self) -> WorkerSettings:
        if self.heartbeat_seconds <= 0 or self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError("DORA_HEARTBEAT_SECONDS must be positive and at most half of DORA_LEASE_SECONDS")
        if self.progress_buffer_steps < 1 or self.progress_buffer_events < 1:
            raise ValueError("DORA_PROGRESS_BUFFER_STEPS and DORA_PROGRESS_BUFFER_EVENTS must be at least 1")
        if self.job_time_limit_seconds <= 0:
            raise ValueError("DORA_JOB_TIME_LIMIT_SECONDS must be positive")
        return self

    @property
    def visibility_timeout(self) -> int:
        """Redis re-delivers an unacknowledged message after this long: above any job's time limit,
        so a long job is never handed to a second worker by the broker (SQL leases do that)."""
        return self.job_time_limit_seconds + 3600


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
