"""The one way a job reaches the workers: a Celery message holding only the job id (and the
one way a webhook delivery reaches its sender: `publish_delivery`, queue `webhooks`).

A job needing one GPU goes to the queue `gpu`, one needing N > 1 to `gpu-xN` (`queue_for`): a
worker with G GPUs consumes `gpu`, `gpu-x2` .. `gpu-xG` (`queues_up_to`) and runs one job at a
time, so it only ever receives a job it has the GPUs for, all of them free.

The API and the reconciler call `publish_job` after the job row is committed. The message is
only a wake-up call: SQL holds the truth and the worker's claim makes duplicates harmless.
A broker failure is reported (False), never raised, so a request that created a job does not
fail because Redis blinked: the job stays queued and the reconciler publishes it again.
Only the broker URL is needed; the task itself lives in worker/ (`worker.run_job`).
"""

from __future__ import annotations

import logging
import threading

from store.broker import BrokerKind, broker_kind

TASK_NAME = "worker.run_job"
QUEUE = "gpu"  # one-GPU jobs; N GPUs: QUEUE-xN
# webhook deliveries go to a queue of their own, consumed by `dora webhooks` (worker/webhooks.py),
# never by a GPU worker: a busy GPU never delays a delivery
WEBHOOK_TASK_NAME = "webhooks.deliver"
WEBHOOK_QUEUE = "webhooks"
# eval runs (issue #24): their own queue, so a long training job never delays an eval's wake-up
EVAL_TASK_NAME = "worker.run_eval"
EVAL_QUEUE = "evals"

log = logging.getLogger(__name__)
_lock = threading.Lock()
_apps: dict[str, object] = {}


def _celery_app(broker_url: str):
    """A producer-only Celery app per broker URL (fast failure when the broker is down)."""
    with _lock:
        app = _apps.get(broker_url)
        if app is None:
            from celery import Celery

            app = Celery("dora-producer", broker=broker_url, set_as_current=False)
            app.conf.broker_connection_timeout = 2
            if broker_kind(broker_url) is BrokerKind.REDIS:  # the SQL transport rejects these options
                app.conf.broker_transport_options = {"socket_connect_timeout": 1, "socket_timeout": 5,
                                                     "max_retries": 0}
            _apps[broker_url] = app
        return app


def queue_for(gpus: int) -> str:
    """The queue of jobs that need `gpus` GPUs on one worker."""
    if gpus < 1:
        raise ValueError(f"a job needs at least one GPU, not {gpus}")
    return QUEUE if gpus == 1 else f"{QUEUE}-x{gpus}"


def queues_up_to(gpus: int) -> list[str]:
    """The queues a worker with `gpus` GPUs consumes: every job it has the GPUs for."""
    return [queue_for(n) for n in range(1, gpus + 1)]


def gpus_of_queue(queue: str | None) -> int | None:
    """The GPU count a queue name stands for (None for a name that is not a job queue)."""
    if queue == QUEUE:
        return 1
    prefix = f"{QUEUE}-x"
    if queue and queue.startswith(prefix) and queue[len(prefix):].isdigit() and int(queue[len(prefix):]) > 1:
        return int(queue[len(prefix):])
    return None


def publish_job(job_id: str, *, broker_url: str, gpus: int = 1) -> bool:
    """Send `worker.run_job(job_id)` to the queue of jobs needing `gpus` GPUs; False (and a log
    line) if the broker failed."""
    return _send(broker_url, TASK_NAME, job_id, queue=queue_for(gpus), what="job", retried_by="reconciler")


def publish_delivery(delivery_id: str, *, broker_url: str) -> bool:
    """Send `webhooks.deliver(delivery_id)` to the `webhooks` queue; False (and a log line) if the
    broker failed: the delivery row stays due and the sweeper publishes it again."""
    return _send(broker_url, WEBHOOK_TASK_NAME, delivery_id, queue=WEBHOOK_QUEUE, what="webhook delivery",
                 retried_by="sweeper")


def publish_eval_run(run_id: str, *, broker_url: str) -> bool:
    """Send `worker.run_eval(run_id)` to the `evals` queue; False (and a log line) if the broker
    failed: the run stays queued in SQL and the reconciler publishes it again."""
    return _send(broker_url, EVAL_TASK_NAME, run_id, queue=EVAL_QUEUE, what="eval run", retried_by="reconciler")


def _send(broker_url: str, task_name: str, row_id: str, *, queue: str, what: str, retried_by: str) -> bool:
    """Send `task_name(row_id)` to `queue`; False (and a log line) if the broker failed: the row stays
    in SQL as it is, and `retried_by` publishes it again."""
    try:
        _celery_app(broker_url).send_task(task_name, args=[row_id], queue=queue, retry=False)
    except Exception as error:  # noqa: BLE001 - any broker problem leaves the row waiting in SQL
        log.warning("could not publish %s %s (the %s will retry): %s", what, row_id, retried_by, error)
        return False
    return True


def broker_reachable(broker_url: str, *, timeout: float = 2.0) -> bool:
    """Whether a connection to the broker can be opened now (for /readyz)."""
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to connect means the broker is not reachable
        return False
    return True
