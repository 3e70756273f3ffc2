"""One attempt's handle on its job row: every write is fenced by (lease owner, attempt).

`Lease` wraps store/jobs.py with a session per call and remembers what the last heartbeat
said: `held` turns False when another attempt took the job (stop at once, write nothing more),
`cancel_requested` when a user asked to cancel. A database that is briefly unreachable costs
a logged warning; only when no heartbeat has succeeded for most of a lease is the lease
treated as lost, since another worker may by then have claimed the job.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus
from store.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Lease:
    settings: Settings
    job_id: str
    owner: str
    attempt: int
    held: bool = True
    cancel_requested: bool = False
    last_renewed: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _call(self, function, **kwargs):
        with session_scope(self.settings) as session:
            return function(session, job_id=self.job_id, owner=self.owner, attempt=self.attempt, **kwargs)

    def renew(self, **progress) -> bool:
        """Heartbeat: extend the lease, store progress, read cancellation; False once the lease is gone."""
        if not self.held:
            return False
        with self._lock:
            try:
                beat = self._call(job_store.heartbeat, lease_seconds=self.settings.lease_seconds, **progress)
            except Exception as error:  # noqa: BLE001 - a database blip must not kill a long run
                log.warning("job %s: heartbeat failed: %s", self.job_id, error)
                if time.monotonic() - self.last_renewed > 0.8 * self.settings.lease_seconds:
                    log.error("job %s: no heartbeat for most of the lease; stopping (another worker may own it)",
                              self.job_id)
                    self.held = False
                return self.held
            self.last_renewed = time.monotonic()
            self.held = beat.held
            self.cancel_requested = self.cancel_requested or beat.cancel_requested
        if not beat.held:
            log.warning("job %s: lease lost (attempt %s); stopping without writing", self.job_id, self.attempt)
        return self.held

    def record_metrics(self, *, step: int, values: dict, epoch: float | None) -> None:
        if self.held:
            self._guarded("record metrics", job_store.record_metrics, step=step, values=values, epoch=epoch)

    def add_checkpoint(self, *, step: int, storage_key: str, metrics: dict) -> bool:
        return self.held and self._call(job_store.add_checkpoint, step=step, storage_key=storage_key,
                                         metrics=metrics) is not None

    def mark_resumed(self, step: int) -> None:
        if self.held:
            self._guarded("mark resumed", job_store.mark_resumed, step=step)

    def event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        if not self.held:
            return
        try:
            with session_scope(self.settings) as session:
                job_store.add_event(session, job_id=self.job_id, message=message, level=level, data=data)
        except Exception as error:  # noqa: BLE001 - events only inform
            log.warning("job %s: could not record event %r: %s", self.job_id, message, error)

    def finish(self, status: JobStatus, **kwargs) -> bool:
        return self.held and self._call(job_store.finish_job, status=status, **kwargs)

    def release(self, reason: str) -> bool:
        return self.held and self._call(job_store.release_job, reason=reason)

    def trained_tokens(self) -> int:
        with session_scope(self.settings) as session:
            return job_store.trained_tokens_total(session, job_id=self.job_id)

    def _guarded(self, what: str, function, **kwargs) -> None:
        try:
            self._call(function, **kwargs)
        except Exception as error:  # noqa: BLE001 - progress is informative; the lease decides ownership
            log.warning("job %s: could not %s: %s", self.job_id, what, error)


class LeaseKeeper:
    """A daemon thread renewing the lease every `interval` seconds, also through slow phases
    (loading a large model, merging, uploading) where the training loop calls nothing."""

    def __init__(self, lease: Lease, interval: float) -> None:
        self.lease, self.interval = lease, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.lease.renew():
                return

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 30)
