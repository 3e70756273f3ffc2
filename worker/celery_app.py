"""The Celery app of the GPU workers and its one task, `worker.run_job(job_id)`.

Settings that follow from "SQL is the truth, the broker only wakes workers" (docs/architecture.md):

- acks_late + reject_on_worker_lost: a message is acknowledged only after its task returned;
  if the process running it dies, the message goes back to the queue. A redelivered message
  whose job is still leased (or finished) is dropped by the claim, so at-least-once delivery
  is harmless.
- prefetch multiplier 1, concurrency 1: a worker holds one job at a time, on up to all of its GPUs
  (worker/gpus.py): it consumes the queues of jobs needing 1..G GPUs (store/queue.py).
- a fresh child process per job (prefork, max_tasks_per_child=1): whatever a job did to CUDA,
  memory included, ends with its process; the parent imports torch (faster starts) but never
  touches CUDA. The parent first reads whether the message's job is still claimable and drops
  the message of one that is not (cancelled, finished...) without forking (worker/pool.py).
- visibility timeout (Redis) above the job time limit: the broker never hands a running job to a
  second worker; when a worker dies, the job's SQL lease expires and the reconciler republishes it.
- no result backend: results live in SQL.
- on shutdown (SIGTERM/Ctrl-C, `docker stop`) the running job is asked to stop at its next
  micro-batch and is given back to the queue, to resume from its newest checkpoint; it is
  published once this worker stopped consuming, so another worker (or this one, restarted)
  takes it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_shutdown, worker_shutting_down
from kombu import Queue

from store.broker import BrokerKind, broker_kind
from store.queue import QUEUE, TASK_NAME, gpus_of_queue, queues_up_to
from worker.celery_apps import every_app_conf
from worker.settings import WorkerSettings, get_worker_settings

log = logging.getLogger(__name__)
PARENT_WATCH_SECONDS = 1.0  # how soon a job process notices that the worker's parent died


def transport_options(settings: WorkerSettings) -> dict:
    if broker_kind(settings.broker_url) is BrokerKind.REDIS:
        return {"visibility_timeout": settings.visibility_timeout}
    return {}  # the SQLAlchemy transport passes its options to create_engine: none needed


def make_celery(settings: WorkerSettings) -> Celery:
    app = Celery("dora-worker", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_queues=tuple(Queue(name, routing_key=name) for name in queues_up_to(settings.gpus or 1)),
        task_routes={TASK_NAME: {"queue": QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.concurrency,
        worker_pool="worker.pool:JobPool",  # prefork, refilled fast (worker/pool.py)
        worker_max_tasks_per_child=1,
        worker_lost_wait=2.0,  # a killed job process frees its slot sooner (results live in SQL anyway)
        task_soft_time_limit=settings.job_time_limit_seconds,
        task_time_limit=settings.job_time_limit_seconds + 600,
        broker_transport_options=transport_options(settings),
        worker_cancel_long_running_tasks_on_connection_loss=False,  # SQL owns the job, not the connection
        **every_app_conf(settings.broker_url),
    )
    app.settings = settings
    return app


app = make_celery(get_worker_settings())


# -- the task --------------------------------------------------------------------------------
# Set by the parent when the worker starts shutting down; shared memory created before the pool
# forks, so every job process sees it (also ones forked after the shutdown began).
_shutting_down = multiprocessing.Value("b", 0, lock=False)


def _publish_at_exit_file() -> Path:
    return Path(app.settings.work_dir) / f".publish-at-exit-{os.getppid()}"


def _publish_at_exit(job_id: str, gpus: int = 1) -> bool:
    """While the worker shuts down, its parent publishes job ids (with the GPU count that names
    their queue) after it stopped consuming (publishing now would hand the job straight back to
    this departing worker)."""
    path = _publish_at_exit_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(f"{job_id} {gpus}\n")
    return True


def _received_for_gpus() -> int:
    """The GPU count of the queue this task's message came from (1 when the broker does not say)."""
    delivery = getattr(run_job_task.request, "delivery_info", None) or {}
    return gpus_of_queue(delivery.get("routing_key")) or 1


@contextmanager
def stop_on_sigterm():
    """In the job's process: a SIGTERM sent to it directly also asks the run to stop cleanly."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # called in-process (tests)
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.task(name=TASK_NAME, Strategy="worker.pool:claim_checked")  # a job no claim would take: no fork
def run_job_task(job_id: str) -> str:
    from transformers.utils import logging as hf_logging

    from store.queue import publish_job
    from worker.job import run_job

    if _shutting_down.value:  # received during the shutdown: leave it to another worker
        _publish_at_exit(job_id, _received_for_gpus())
        return "deferred"
    hf_logging.disable_progress_bar()  # loading/saving bars would land in the worker log as warnings
    with stop_on_sigterm() as signalled:
        def stopping() -> bool:
            return signalled.is_set() or bool(_shutting_down.value)

        def publish(jid: str, gpus: int) -> bool:
            return (_publish_at_exit(jid, gpus) if stopping()
                    else publish_job(jid, broker_url=app.settings.broker_url, gpus=gpus))

        return run_job(job_id, settings=app.settings, stop_requested=stopping, publish=publish,
                       received_for_gpus=_received_for_gpus())


def _parse_given_back(line: str) -> tuple[str, int]:
    job_id, _, gpus = line.partition(" ")
    return job_id, int(gpus or 1)


# -- process life cycle ----------------------------------------------------------------------
@worker_init.connect
def _preload(**_) -> None:
    """Import the ML stack once in the parent so each forked job skips it; CUDA stays untouched."""
    if not app.settings.preload_ml:
        return
    import torch

    import dora_core.training  # noqa: F401 - torch, transformers

    if torch.cuda.is_initialized():  # pragma: no cover - a guard for future imports
        raise RuntimeError("CUDA was initialised in the worker's parent process; jobs must own it")


@worker_process_init.connect
def _forget_parent_connections(**_) -> None:
    """A forked child must not reuse the parent's pooled database connections."""
    from store.db import forget_inherited_connections

    forget_inherited_connections()


@worker_process_init.connect
def _die_with_the_worker_process_not_a_thread(**_) -> None:
    """Celery's pool sets PR_SET_PDEATHSIG(SIGKILL) in each job process, and Linux sends it when
    the *thread* that forked the process exits. A job process forked by one of the pool's threads
    (the refill after a job process died, say one killed for memory) was therefore SIGKILLed by a
    warm shutdown, when that thread stopped, instead of checkpointing and giving its job back. The
    signal is cleared here, and a thread watches the parent process instead: when the worker's
    parent is gone, this process SIGKILLs itself (a multi-GPU job's ranks die with it)."""
    from billiard.util import set_pdeathsig

    try:
        set_pdeathsig(0)
    except OSError:  # not Linux: there was none to clear
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_WATCH_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@worker_shutting_down.connect
def _ask_running_jobs_to_stop(**_) -> None:
    """A warm shutdown alone would wait for the whole running job: instead it stops at its next
    micro-batch and goes back to the queue, to resume from its newest checkpoint."""
    _shutting_down.value = 1


@worker_shutdown.connect
def _publish_released_jobs(**_) -> None:
    """Consumption has stopped: now publish what this worker's jobs gave back."""
    from store.db import session_scope
    from store.job_queries import still_queued
    from store.queue import publish_job
    from worker.database import first_line, unreachable

    path = Path(app.settings.work_dir) / f".publish-at-exit-{os.getpid()}"
    if not path.exists():
        return
    given_back = dict(_parse_given_back(line) for line in path.read_text().splitlines() if line.strip())
    try:
        with session_scope(app.settings) as session:  # only what still waits (not a stale duplicate)
            queued = still_queued(session, given_back)
    except Exception as error:
        if not unreachable(error):
            raise
        log.warning("database unreachable at shutdown (%s); publishing every job given back (a duplicate is "
                    "dropped by the claim)", first_line(error))
        queued = set(given_back)
    for job_id, gpus in given_back.items():
        if job_id in queued and publish_job(job_id, broker_url=app.settings.broker_url, gpus=gpus):
            log.info("job %s given back to the queue", job_id)
    path.unlink(missing_ok=True)
