"""The reconciler: the broker only wakes workers, so it re-sends what SQL says is still to do.

Every `DORA_RECONCILE_INTERVAL_SECONDS` one pass:
  1. settles abandoned jobs that must not run again (lease expired, or given back by its last
     attempt, at the attempt cap -> failed; the same with a cancel request -> cancelled);
  2. re-publishes jobs that are `queued` but unclaimed for `DORA_REQUEUE_AFTER_SECONDS` (the
     message was lost: broker down when the job was created, Redis restarted without
     persistence, a worker killed while holding it) and `running` jobs whose lease expired
     (their worker died); the next attempt resumes from the newest checkpoint.
Each re-publish first wins a conditional UPDATE (store.jobs.mark_republished), so reconcilers
on several worker hosts publish a stale job once per interval, not once each. Duplicate
messages are harmless anyway: the claim lets one through.
With the embedded broker (kombu's SQLAlchemy transport) it also deletes delivered messages,
which that transport keeps forever (marked invisible).

`dora worker` starts one as a side process (`python -m worker.reconciler`); `dora reconcile`
runs it alone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from store import jobs as job_store
from store.db import session_scope
from store.models import utcnow
from store.queue import publish_job
from worker.settings import WorkerSettings, get_worker_settings

log = logging.getLogger("worker.reconciler")


@dataclass
class Pass:
    settled: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    unpublished: list[str] = field(default_factory=list)  # the broker refused; retried next pass
    compacted: int = 0  # delivered messages removed from the embedded broker's table


class Reconciler:
    def __init__(self, settings: WorkerSettings, publish: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.publish = publish or (lambda job_id: publish_job(job_id, broker_url=settings.broker_url))

    def run_once(self) -> Pass:
        result = Pass()
        with session_scope(self.settings) as session:
            result.settled = job_store.settle_abandoned(session)
            candidates = job_store.list_reclaimable(session, queued_for_seconds=self.settings.requeue_after_seconds)
        for job_id in candidates:
            with session_scope(self.settings) as session:
                not_since = utcnow() - timedelta(seconds=self.settings.requeue_after_seconds)
                if not job_store.mark_republished(session, job_id=job_id, not_since=not_since):
                    continue  # another reconciler took it this round
            (result.published if self.publish(job_id) else result.unpublished).append(job_id)
        result.compacted = compact_sql_broker(self.settings.broker_url)
        for job_id in result.settled:
            log.info("settled abandoned job %s", job_id)
        if result.published:
            log.info("re-published %s", ", ".join(result.published))
        return result

    def run_forever(self, stop: threading.Event, *, parent_pid: int | None = None) -> None:
        """Pass after pass until `stop` is set (or the process that started us is gone)."""
        interval = self.settings.reconcile_interval_seconds
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as error:  # noqa: BLE001 - a database blip: try again next interval
                log.warning("reconciler pass failed: %s", error)
            if parent_pid is not None and os.getppid() != parent_pid:
                log.info("the worker that started the reconciler is gone; stopping")
                return
            stop.wait(interval)


_broker_engines: dict = {}


def compact_sql_broker(broker_url: str) -> int:
    """Delete the messages kombu's SQLAlchemy transport already delivered (it only hides them).

    Safe while a worker holds one: the payload is in that worker's memory, and a graceful
    shutdown puts it back as a new row."""
    if not broker_url.startswith(("sqla+", "sqlalchemy+")):
        return 0
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    url = broker_url.split("+", 1)[1]
    engine = _broker_engines.get(url) or _broker_engines.setdefault(url, create_engine(url))
    try:
        with engine.begin() as connection:
            return connection.execute(text("DELETE FROM kombu_message WHERE visible = :hidden"),
                                      {"hidden": False}).rowcount
    except SQLAlchemyError as error:  # no table yet (nothing published), or the file is busy
        log.debug("broker compaction skipped: %s", error)
        return 0


def main() -> int:
    """`python -m worker.reconciler [--parent PID]`: run until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/reconciler] %(message)s")
    parent = int(sys.argv[sys.argv.index("--parent") + 1]) if "--parent" in sys.argv else None
    settings = get_worker_settings()
    if settings.reconcile_interval_seconds <= 0:
        log.info("DORA_RECONCILE_INTERVAL_SECONDS is 0: the reconciler is disabled")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("reconciling every %gs (re-publishing jobs unclaimed for %gs)", settings.reconcile_interval_seconds,
             settings.requeue_after_seconds)
    Reconciler(settings).run_forever(stop, parent_pid=parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
