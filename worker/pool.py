"""The prefork pool, refilled quickly: with one job per process (max_tasks_per_child=1) the next
job waits for a fresh process, and Celery's pool looks for exited processes only every 5 s."""

from __future__ import annotations

from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool

REFILL_SECONDS = 0.25


class _QuickRefillAsynPool(AsynPool):
    @property
    def timers(self):
        return {self.maintain_pool: REFILL_SECONDS}


class JobPool(TaskPool):
    """`--pool worker.pool:JobPool`: prefork, one fresh process per job, replaced within 0.25 s."""

    Pool = _QuickRefillAsynPool
