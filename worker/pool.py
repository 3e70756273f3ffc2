"""The prefork pool, refilled quickly, and the claim check in front of it.

With one job per process (max_tasks_per_child=1) the next job waits for a fresh process, and
Celery's pool looks for exited processes only every 5 s: `JobPool` looks every 0.25 s.

A fresh process per message is what a job needs, and what a message whose job no claim would
take (cancelled, finished, held by a live attempt, at its attempt cap, needing more GPUs than this
worker has) must not cost: a create-then-cancel loop used to cost a fork per cancelled job (about
1.3 messages a second per worker), delaying every other tenant's jobs. `claim_checked`, the
task's strategy (what Celery calls in the worker's parent for each message it receives), reads
first whether the job is still claimable (store/job_queries.py `still_claimable`, one
primary-key read) and acknowledges and drops the message if not; the job process's claim still
decides, this only saves the fork. When the read fails (the database unreachable), the message
goes on to a job process as before, whose claim waits for the database.
"""

from __future__ import annotations

import logging

from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool
from celery.worker.strategy import default

from store.db import session_scope
from store.job_queries import still_claimable
from worker.database import first_line
from worker.gpus import worker_gpus

log = logging.getLogger(__name__)
REFILL_SECONDS = 0.25


class _QuickRefillAsynPool(AsynPool):
    @property
    def timers(self):
        return {self.maintain_pool: REFILL_SECONDS}


class JobPool(TaskPool):
    """`--pool worker.pool:JobPool`: prefork, one fresh process per job, replaced within 0.25 s."""

    Pool = _QuickRefillAsynPool


def _job_id(message) -> str | None:
    """The job id a `worker.run_job` message carries (protocol 2: [args, kwargs, embed])."""
    try:
        payload = message.payload
        args, kwargs = (payload.get("args"), payload.get("kwargs")) if isinstance(payload, dict) else payload[:2]
        job_id = args[0] if args else (kwargs or {}).get("job_id")
    except Exception:  # noqa: BLE001 - an unexpected shape goes the usual way
        return None
    return job_id if isinstance(job_id, str) else None


def claim_checked(task, app, consumer, **kwargs):
    """Celery's default strategy, after a check that the message's job is still claimable."""
    handle = default(task, app, consumer, **kwargs)
    settings = app.settings
    max_gpus = worker_gpus(settings.gpus)  # counted once, without initialising CUDA

    def claimable(job_id: str) -> bool:
        try:
            with session_scope(settings) as session:
                return still_claimable(session, job_id=job_id, max_gpus=max_gpus)
        except Exception as error:  # noqa: BLE001 - the job process's claim waits for the database
            log.warning("job %s: could not check whether it is claimable (%s); handing it to a job process",
                        job_id, first_line(error))
            return True

    def task_message_handler(message, body, ack, reject, callbacks, **options):
        job_id = _job_id(message)
        if job_id is not None and not claimable(job_id):
            log.info("job %s: not claimable (finished, cancelled, held by a live attempt, at its attempt cap, or "
                     "needing more than this worker's %d GPUs); message dropped without a job process",
                     job_id, max_gpus)
            ack(log, consumer.connection_errors)  # as a Request acknowledges (message.ack_log_error)
            return None
        return handle(message, body, ack, reject, callbacks, **options)

    return task_message_handler
