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

A broker that lost its queue (Redis FLUSHALL, a Redis restarted without persistence, a failover
to an empty replica) is noticed at the next pass instead of after DORA_REQUEUE_AFTER_SECONDS:
the reconciler keeps a marker key in Redis (`MARKER_KEY`, no expiry), which goes with the
rest of the data. A pass that finds it gone puts it back (SET NX: one reconciler wins, whatever
the number of hosts) and re-publishes every queued job at once. The first pass against a fresh
Redis does the same, which only sends duplicates the claims drop.

The database being unreachable is not fatal: a pass that fails is retried with backoff
(interval, 2 x interval, ... up to 15 s or the interval), logged, until it is back.
With the embedded broker (kombu's SQLAlchemy transport) it also deletes delivered messages,
which that transport keeps forever (marked invisible).

`dora worker` starts one as a side process (`python -m worker.reconciler`); `dora reconcile`
runs it alone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from store import jobs as job_store
from store.broker import BrokerKind, broker_kind
from store.db import session_scope
from store.job_queries import list_reclaimable, waiting_for_a_worker
from store.models import Job, utcnow
from store.queue import publish_job
from worker.database import Backoff, first_line, unreachable
from worker.settings import WorkerSettings, get_worker_settings

log = logging.getLogger("worker.reconciler")


MARKER_KEY = "dora:broker-marker"
MAX_BACKOFF_SECONDS = 15.0


@dataclass
class Pass:
    settled: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    unpublished: list[str] = field(default_factory=list)  # the broker refused; retried next pass
    compacted: int = 0  # delivered messages removed from the embedded broker's table
    broker_lost_queue: bool = False  # the marker was gone: every queued job was re-published


class Reconciler:
    def __init__(self, settings: WorkerSettings, publish: Callable[[str, int], bool] | None = None) -> None:
        self.settings = settings  # publish(job_id, gpus): to the queue of jobs needing that many GPUs
        self.publish = publish or (lambda job_id, gpus: publish_job(job_id, broker_url=settings.broker_url,
                                                                    gpus=gpus))

    def run_once(self) -> Pass:
        result = Pass()
        with session_scope(self.settings) as session:
            result.settled = job_store.settle_abandoned(session)
            candidates = list_reclaimable(session, queued_for_seconds=self.settings.requeue_after_seconds)
        if broker_lost_its_queue(self.settings.broker_url):
            result.broker_lost_queue = True
            lost = self.republish_queued(result)
            log.log(logging.WARNING if lost else logging.INFO,
                    "the broker has no marker key: it lost its queue (FLUSHALL, a restart without persistence) "
                    "or this is its first reconciler; re-published %d queued jobs now%s", len(lost),
                    f": {', '.join(lost)}" if lost else "")
            candidates = [job_id for job_id in candidates if job_id not in lost]
        for job_id in candidates:
            self._republish(job_id, result, requeue_after=self.settings.requeue_after_seconds)
        result.compacted = compact_sql_broker(self.settings.broker_url)
        for job_id in result.settled:
            log.info("settled abandoned job %s", job_id)
        if result.published:
            log.info("re-published %s", ", ".join(result.published))
        return result

    def republish_queued(self, result: Pass) -> list[str]:
        """Re-publish every queued job that may run, now (the broker lost their messages)."""
        with session_scope(self.settings) as session:
            queued = waiting_for_a_worker(session)
        return [job_id for job_id in queued if self._republish(job_id, result, requeue_after=0.0)]

    def _republish(self, job_id: str, result: Pass, *, requeue_after: float) -> bool:
        with session_scope(self.settings) as session:
            not_since = utcnow() - timedelta(seconds=requeue_after)
            if not job_store.mark_republished(session, job_id=job_id, not_since=not_since):
                return False  # another reconciler took it this round (or it was claimed meanwhile)
            gpus = session.scalar(select(Job.gpus).where(Job.id == job_id)) or 1
        published = self.publish(job_id, gpus)
        (result.published if published else result.unpublished).append(job_id)
        return True

    def run_forever(self, stop: threading.Event, *, parent_pid: int | None = None) -> None:
        """Pass after pass until `stop` is set (or the process that started us is gone); a pass
        that fails (the database is unreachable) is retried with backoff."""
        interval = self.settings.reconcile_interval_seconds
        backoff, failing_since = Backoff(interval, max(interval, MAX_BACKOFF_SECONDS)), None
        while not stop.is_set():
            wait = interval
            try:
                self.run_once()
            except Exception as error:  # noqa: BLE001 - a database blip: try again, backing off
                failing_since = failing_since or time.monotonic()
                wait = backoff.next()
                what = f"database unreachable ({first_line(error)})" if unreachable(error) else str(error)
                log.warning("reconciler pass failed: %s; next pass in %.0f s", what, wait)
            else:
                if failing_since is not None:
                    log.info("database reachable again after %.0f s", time.monotonic() - failing_since)
                backoff, failing_since = Backoff(interval, max(interval, MAX_BACKOFF_SECONDS)), None
            if parent_pid is not None and os.getppid() != parent_pid:
                log.info("the worker that started the reconciler is gone; stopping")
                return
            stop.wait(wait)


_redis_clients: dict = {}


def broker_lost_its_queue(broker_url: str) -> bool:
    """Redis only: True when the marker key was gone (and is now back, put there by this call:
    SET NX, so one reconciler of many sees True); False when it is there, when Redis cannot be
    reached (the next pass tries again) and for other brokers."""
    if broker_kind(broker_url) is not BrokerKind.REDIS:
        return False
    import redis

    client = _redis_clients.get(broker_url)
    if client is None:
        client = _redis_clients.setdefault(broker_url, redis.Redis.from_url(
            broker_url, socket_connect_timeout=2, socket_timeout=5))
    marker = json.dumps({"set_at": utcnow().isoformat(), "by": f"{socket.gethostname()}:{os.getpid()}"})
    try:
        return bool(client.set(MARKER_KEY, marker, nx=True))
    except redis.RedisError as error:
        log.debug("broker marker not checked: %s", error)
        return False


_broker_engines: dict = {}


def compact_sql_broker(broker_url: str) -> int:
    """Delete the messages kombu's SQLAlchemy transport already delivered (it only hides them).

    Safe while a worker holds one: the payload is in that worker's memory, and a graceful
    shutdown puts it back as a new row."""
    if broker_kind(broker_url) is not BrokerKind.SQLALCHEMY:
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
