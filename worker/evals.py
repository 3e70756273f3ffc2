"""`dora evals`: the process that executes eval runs. Not a GPU worker: no torch, no model.

Why a process of its own, as the webhook sender is: an eval run only sends completions to the
inference servers (`dora serve`, which own the GPUs and batch what they get) and grades the answers,
so it needs threads, not a GPU; on the GPU worker it would wait behind a training job (one job at a
time there) and a training job behind it. A Celery app on the `evals` queue with a thread pool
(DORA_EVAL_CONCURRENCY runs at once, each with DORA_EVAL_COMPLETION_CONCURRENCY completions in
flight), plus a sweeper thread:

- the task `worker.run_eval(run_id)` claims the run with its lease and executes it
  (worker/eval_run.py); a duplicate or stale message changes no row and is dropped;
- the sweeper, every DORA_EVAL_SWEEP_INTERVAL_SECONDS, settles runs that may not run again (a cancel
  asked of a run whose executor died: canceled; at the attempt cap: failed) and publishes again
  the runs whose executor died (lease expired: the next attempt skips the items stored) and the
  queued runs nobody claimed for DORA_EVAL_REQUEUE_AFTER_SECONDS (the message was lost).
  `mark_republished` lets one sweeper of many publish a run per interval.

Messages are acknowledged on receipt (SQL holds the run; a lost message costs a sweep). On
SIGTERM, running runs stop after their batch, are given back (queued) and published again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta

from celery import Celery
from celery.signals import worker_shutting_down

from store import eval_execution as runs
from store.db import session_factory, session_scope
from store.inference_client import InferenceClient
from store.models import utcnow
from store.queue import EVAL_QUEUE, EVAL_TASK_NAME, publish_eval_run
from store.storage import open_storage
from worker.celery_apps import compact_embedded_broker, run_with_sweeper, thread_pool_app
from worker.eval_run import run_eval
from worker.settings import EvalRunnerSettings

log = logging.getLogger("worker.evals")


class Sweeper:
    """Settles and publishes again the runs SQL says need it (see the module docstring)."""

    def __init__(self, settings: EvalRunnerSettings, publish: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.publish = publish or (lambda run_id: publish_eval_run(run_id, broker_url=settings.broker_url))

    def run_once(self) -> list[str]:
        s = self.settings
        with session_scope(s) as session:
            for run_id, status in runs.settle(session):
                log.info("eval run %s settled %s (no attempt may take it)", run_id, status)
            candidates = runs.reclaimable(session, queued_for_seconds=s.eval_requeue_after_seconds)
        published = []
        for run_id, in_progress in candidates:
            wait = s.eval_sweep_interval_seconds if in_progress else s.eval_requeue_after_seconds
            with session_scope(s) as session:
                won = runs.mark_republished(session, run_id=run_id, not_since=utcnow() - timedelta(seconds=wait))
            if won and self.publish(run_id):
                published.append(run_id)
        if published:
            log.info("eval runs published again: %s", ", ".join(published))
        compact_embedded_broker(s.broker_url)
        return published


def make_celery(settings: EvalRunnerSettings, stopping: threading.Event | None = None) -> Celery:
    """The app and its task; `stopping` is set when the worker starts shutting down."""
    stopping = stopping or threading.Event()
    app = thread_pool_app("dora-evals", broker_url=settings.broker_url, queue=EVAL_QUEUE, task_name=EVAL_TASK_NAME,
                          concurrency=settings.eval_concurrency)
    storage = open_storage(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
    sessions = session_factory(settings)
    # one HTTP client for every run of this process: its pool as large as all their completions
    client = InferenceClient(settings, sessions,
                             connections=settings.eval_concurrency * settings.eval_completion_concurrency)
    owner = f"evals@{socket.gethostname()}:{os.getpid()}"

    @app.task(name=EVAL_TASK_NAME)
    def run_eval_task(run_id: str) -> str:
        if stopping.is_set():  # received while shutting down: the sweeper of a running executor takes it
            return "deferred"
        return run_eval(run_id, settings=settings, client=client, storage=storage, owner=owner,
                        stopping=stopping.is_set,
                        publish=lambda rid: publish_eval_run(rid, broker_url=settings.broker_url))

    return app


def run(settings: EvalRunnerSettings, *, hostname: str | None = None) -> int:
    """Consume the `evals` queue, with the sweeper beside it, until SIGTERM/Ctrl-C."""
    stopping = threading.Event()
    worker_shutting_down.connect(lambda **_: stopping.set(), weak=False)
    return run_with_sweeper(make_celery(settings, stopping), sweep=Sweeper(settings).run_once,
                            sweep_every_seconds=settings.eval_sweep_interval_seconds, what="eval",
                            hostname=hostname or "evals@%h", log_level=settings.log_level, log=log)
