"""What the three Celery apps (`dora worker`, `dora webhooks`, `dora evals`) share, written once.

Every app: no result backend (SQL holds results), JSON only, a broker restart waited out, no
remote control on the embedded SQL broker (its transport has no fanout exchanges). The two
thread-pool processes (webhooks, evals) also share their shape: one queue of their own, messages
acknowledged on receipt (SQL holds the work, the message only wakes them: a lost one costs a
sweep), and a sweeper thread beside the pool that publishes again what SQL says was lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import Celery
from kombu import Queue

from store.broker import BrokerKind, broker_kind

SWEEPER_JOIN_SECONDS = 10  # how long a stopping process waits for its sweeper's current sweep


def every_app_conf(broker_url: str) -> dict:
    """The Celery settings every Dora worker app sets alike (see the module docstring)."""
    return dict(
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker restart is waited out, never fatal
        worker_enable_remote_control=broker_kind(broker_url) is not BrokerKind.SQLALCHEMY,
        worker_send_task_events=False,
    )


def thread_pool_app(name: str, *, broker_url: str, queue: str, task_name: str, concurrency: int) -> Celery:
    """An app consuming `queue` alone with `concurrency` threads; its task is registered by the caller."""
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_queues=(Queue(queue, routing_key=queue),),
        task_routes={task_name: {"queue": queue}},
        task_acks_late=False,  # SQL holds the work: a message lost with this process is swept again
        worker_prefetch_multiplier=1,
        worker_concurrency=concurrency,
        worker_pool="threads",
        **every_app_conf(broker_url),
    )
    return app


def compact_embedded_broker(broker_url: str) -> None:
    """Each sweep compacts the SQL broker too, as the reconciler does: a process may run without
    any GPU worker (and its reconciler) beside it."""
    if broker_kind(broker_url) is BrokerKind.SQLALCHEMY:
        from worker.reconciler import compact_sql_broker

        compact_sql_broker(broker_url)


def sweep_forever(sweep: Callable[[], object], *, every_seconds: float, stop: threading.Event, what: str,
                  log: logging.Logger) -> None:
    """`sweep()` every `every_seconds` until `stop` is set; a failed sweep is logged and tried again."""
    while not stop.is_set():
        try:
            sweep()
        except Exception as error:  # noqa: BLE001 - a database blip: try again next sweep
            log.warning("%s sweep failed: %s", what, error)
        stop.wait(every_seconds)


def run_with_sweeper(app: Celery, *, sweep: Callable[[], object], sweep_every_seconds: float, what: str,
                     hostname: str, log_level: str, log: logging.Logger) -> int:
    """Consume the app's queue with its thread pool, the sweeper beside it, until SIGTERM/Ctrl-C;
    the exit status of the Celery worker."""
    stop = threading.Event()
    sweeper = threading.Thread(target=sweep_forever, name=f"{what}-sweeper", daemon=True,
                               kwargs=dict(sweep=sweep, every_seconds=sweep_every_seconds, stop=stop, what=what,
                                           log=log))
    sweeper.start()
    conf = app.conf
    argv = ["worker", "--queues", conf.task_default_queue, "--pool", "threads", "--concurrency",
            str(conf.worker_concurrency), "--loglevel", log_level.upper(), "--hostname", hostname,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    try:
        app.worker_main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        stop.set()
        sweeper.join(timeout=SWEEPER_JOIN_SECONDS)
    return 0
