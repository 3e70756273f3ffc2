"""One attempt's handle on its job row: every write is fenced by (lease owner, attempt).

`Lease` wraps store/ with a session per call and remembers what the last heartbeat said:
`held` turns False when another attempt took the job (stop at once, write nothing more),
`cancel_requested` when a user asked to cancel, `pause_requested` when one asked to pause.

Progress is buffered. Metric points, events, samples, the "resumed" marker and checkpoint rows
go into a buffer that every heartbeat writes in one fenced transaction (store/progress.py), so a
database that is unreachable for a while loses none of them: they are written, each step
once, when it is back. The buffer holds at most `progress_buffer_steps` metric points and
`progress_buffer_events` events (DORA_PROGRESS_BUFFER_STEPS / _EVENTS); past that the oldest
are dropped, and an event says how many steps' metrics were lost. While the database is
unreachable, writes are tried again with backoff rather than at every step.

The lease is the limit. A database that is unreachable costs warnings; when no heartbeat has
succeeded for most of a lease (`LEASE_MARGIN`), another worker may own the job by then, so
the lease counts as lost: the run stops and the buffer is dropped. After training, the
writes that end the attempt (trained tokens, outputs and final status, a release) are retried
with backoff within that same limit, so an outage of up to 0.8 x DORA_LEASE_SECONDS (96 s by
default) is waited out; past it the attempt gives the job up without writing, and the
reconciler re-publishes it once its lease has expired. Whatever the local clock says, each
write is still fenced in SQL, so one that arrives after another attempt claimed the job
changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import select

from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus
from store.models import Checkpoint
from store.progress import PendingEvent, PendingSample, StepMetrics, write_progress
from worker.database import Backoff, first_line, unreachable
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

LEASE_MARGIN = 0.8  # the lease counts as lost after this share of it without a successful write
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 5.0
WRITE_BATCH = 500  # metric points per transaction when a backlog is written


class LeaseGone(Exception):  # noqa: N818 - a state, read as a sentence
    """The lease is lost (another attempt took the job, or the database was away for most of it)."""


@dataclass
class PendingCheckpoint:
    step: int
    storage_key: str
    metrics: dict


@dataclass
class Lease:
    settings: WorkerSettings
    job_id: str
    owner: str
    attempt: int
    held: bool = True
    cancel_requested: bool = False
    pause_requested: bool = False  # a user asked to pause: checkpoint, then release the job (paused)
    last_renewed: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)  # one write at a time
    _buffer_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _metrics: dict[int, StepMetrics] = field(default_factory=dict, init=False, repr=False)  # by step, oldest first
    _events: list[PendingEvent] = field(default_factory=list, init=False, repr=False)
    _checkpoints: list[PendingCheckpoint] = field(default_factory=list, init=False, repr=False)
    _samples: dict[tuple[int, int], PendingSample] = field(default_factory=dict, init=False, repr=False)
    _resumed_from: int | None = field(default=None, init=False, repr=False)
    _dropped_steps: list[int] = field(default_factory=list, init=False, repr=False)  # [first, last, count]
    _dropped_events: int = field(default=0, init=False, repr=False)
    _outage_since: float | None = field(default=None, init=False, repr=False)  # when writes began to fail
    _next_try: float = field(default=0.0, init=False, repr=False)
    _backoff: Backoff = field(default_factory=lambda: Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS), init=False,
                              repr=False)

    # -- buffering what the run reports ------------------------------------------------------
    def record_metrics(self, *, step: int, values: dict, epoch: float | None) -> None:
        """Buffer one step's metrics (a later call for the same step replaces them); the next
        heartbeat writes them."""
        if not self.held:
            return
        with self._buffer_lock:
            self._metrics.pop(step, None)
            self._metrics[step] = StepMetrics(step=step, values=values, epoch=epoch)
            while len(self._metrics) > self.settings.progress_buffer_steps:
                dropped = next(iter(self._metrics))
                del self._metrics[dropped]
                first, _, count = self._dropped_steps or [dropped, dropped, 0]
                self._dropped_steps = [first, dropped, count + 1]

    def record_samples(self, *, step: int, samples: list[dict]) -> None:
        """Buffer an evaluation's samples (`index`, `prompt`, `expected`, `answer` each) for the
        next heartbeat. Bounded like events: past `progress_buffer_events` the oldest go (logged)."""
        if not self.held:
            return
        with self._buffer_lock:
            for sample in samples:
                self._samples[step, sample["index"]] = PendingSample(
                    step=step, index=sample["index"], prompt=sample["prompt"], expected=sample["expected"],
                    answer=sample["answer"])
            while len(self._samples) > self.settings.progress_buffer_events:
                dropped = next(iter(self._samples))
                del self._samples[dropped]
                log.warning("job %s: sample %s of step %s not kept (the progress buffer is full)", self.job_id,
                            dropped[1], dropped[0])

    def event(self, message: str, *, level: str = "info", data: dict | None = None) -> None:
        """Record a user-visible event now (or once the database is back)."""
        if not self.held:
            return
        self._add_event(PendingEvent(message=message, level=level, data=data))
        self.renew()

    def mark_resumed(self, step: int) -> None:
        """This attempt continues from the checkpoint at `step` (written with the next heartbeat)."""
        if not self.held:
            return
        with self._buffer_lock:
            self._resumed_from = step
        self._add_event(PendingEvent(message=f"Attempt {self.attempt} resumed from the checkpoint at step {step}",
                                     data={"step": step}))

    def add_checkpoint(self, *, step: int, storage_key: str, metrics: dict) -> str:
        """Register a checkpoint already in storage: "registered", "pending" (the database is away:
        it is registered once it is back, so keep its files) or "lost" (delete them)."""
        if not self.held:
            return "lost"
        pending = PendingCheckpoint(step=step, storage_key=storage_key, metrics=metrics)
        with self._buffer_lock:
            self._checkpoints.append(pending)
        self.renew()
        if not self.held:
            return "lost"
        with self._buffer_lock:
            return "pending" if any(p is pending for p in self._checkpoints) else "registered"

    def _add_event(self, event: PendingEvent) -> None:
        with self._buffer_lock:
            self._events.append(event)
            while len(self._events) > self.settings.progress_buffer_events:
                self._events.pop(0)
                self._dropped_events += 1

    # -- heartbeat: extend the lease and write the buffer ----------------------------------------
    def renew(self, **progress) -> bool:
        """Heartbeat: extend the lease, write what is buffered, read cancellation; False once the
        lease is gone. While the database is unreachable, tries only when its backoff allows."""
        if not self.held:
            return False
        with self._lock:
            if self._outage_since is not None and time.monotonic() < self._next_try:
                return self._check_margin()
            try:
                self._write(progress)
            except LeaseGone:
                return False
            except Exception as error:  # noqa: BLE001 - a database blip must not kill a long run
                self._failed(error)
                return self._check_margin()
        return self.held

    def _write(self, progress: dict) -> None:
        """Write the buffer with a heartbeat (in batches), then pending checkpoint rows; raises
        LeaseGone when the fence refused, or the database error."""
        while True:
            metrics, events, resumed, notice = self._snapshot()
            with self._buffer_lock:
                samples = list(self._samples.values())
            beat = self._call(write_progress, lease_seconds=self.settings.lease_seconds, metrics=metrics,
                              events=events, samples=samples, resumed_from_step=resumed, **progress)
            if not beat.held:
                self._lost("lease lost (attempt %s); stopping without writing")
            self._written(metrics, events, resumed, notice)
            with self._buffer_lock:
                for sample in samples:
                    if self._samples.get((sample.step, sample.index)) is sample:
                        del self._samples[sample.step, sample.index]
            self.last_renewed = time.monotonic()
            self.cancel_requested = self.cancel_requested or beat.cancel_requested
            self.pause_requested = self.pause_requested or beat.pause_requested
            if len(metrics) < WRITE_BATCH:
                break
        while self._checkpoints:
            self._register(self._checkpoints[0])
        if self._outage_since is not None:
            log.info("job %s: database reachable again after %.0f s; buffered progress written", self.job_id,
                     time.monotonic() - self._outage_since)
            self._outage_since, self._backoff = None, Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS)

    def _snapshot(self) -> tuple[list[StepMetrics], list[PendingEvent], int | None, PendingEvent | None]:
        with self._buffer_lock:
            notice = None
            if self._dropped_steps or self._dropped_events:
                notice = PendingEvent(level="warning", message=self._dropped_message(),
                                      data={"dropped_steps": self._dropped_steps[2] if self._dropped_steps else 0,
                                            "dropped_events": self._dropped_events})
            events = ([notice] if notice else []) + list(self._events)
            return list(self._metrics.values())[:WRITE_BATCH], events, self._resumed_from, notice

    def _dropped_message(self) -> str:
        parts = []
        if self._dropped_steps:
            first, last, count = self._dropped_steps
            parts.append(f"the metrics of {count} steps ({first}-{last})")
        if self._dropped_events:
            parts.append(f"{self._dropped_events} events")
        return (f"The database was unreachable for longer than this worker buffers progress: {' and '.join(parts)} "
                f"were not kept (it holds {self.settings.progress_buffer_steps} steps and "
                f"{self.settings.progress_buffer_events} events)")

    def _written(self, metrics, events, resumed, notice) -> None:
        with self._buffer_lock:
            for point in metrics:
                if self._metrics.get(point.step) is point:
                    del self._metrics[point.step]
            ids = {event.id for event in events}
            self._events = [event for event in self._events if event.id not in ids]
            if self._resumed_from == resumed:
                self._resumed_from = None
            if notice is not None:
                self._dropped_steps, self._dropped_events = [], 0

    def _register(self, pending: PendingCheckpoint) -> None:
        """One checkpoint row (and its event), once: a replay after a lost commit answer finds it."""
        with session_scope(self.settings) as session:
            exists = select(Checkpoint.id).where(Checkpoint.job_id == self.job_id,
                                                 Checkpoint.storage_key == pending.storage_key)
            if session.scalars(exists).first() is None and job_store.add_checkpoint(
                    session, job_id=self.job_id, owner=self.owner, attempt=self.attempt, step=pending.step,
                    storage_key=pending.storage_key, metrics=pending.metrics) is None:
                self._lost("lease lost (attempt %s) before checkpoint registration; stopping without writing")
        with self._buffer_lock:
            self._checkpoints = [p for p in self._checkpoints if p is not pending]

    def _failed(self, error: Exception) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.warning("job %s: could not write progress (%s); buffering it and retrying with backoff, for at "
                        "most %.0f s more (the lease)", self.job_id, first_line(error), self._margin_left())
        else:
            log.debug("job %s: database still unreachable: %s", self.job_id, first_line(error))
        self._next_try = now + self._backoff.next()

    def _margin_left(self) -> float:
        return LEASE_MARGIN * self.settings.lease_seconds - (time.monotonic() - self.last_renewed)

    def _check_margin(self) -> bool:
        if self.held and self._margin_left() <= 0:
            log.error("job %s: no heartbeat for most of the lease; stopping (another worker may own the job by now)",
                      self.job_id)
            self._drop()
        return self.held

    def _lost(self, message: str) -> None:
        log.warning("job %s: " + message, self.job_id, self.attempt)
        self._drop()
        raise LeaseGone

    def _drop(self) -> None:
        self.held = False
        with self._buffer_lock:
            if self._metrics or self._events:
                log.warning("job %s: %d buffered metric points and %d events not written (the lease is gone)",
                            self.job_id, len(self._metrics), len(self._events))
            self._metrics, self._events, self._checkpoints, self._samples = {}, [], [], {}

    # -- ending the attempt: retried within the lease ----------------------------------------------
    def flush(self) -> bool:
        """Write everything buffered, waiting for the database within the lease; False when the lease is gone."""
        try:
            self._retrying("write buffered progress", lambda: self._write({}))
        except LeaseGone:
            return False
        return True

    def finish(self, status: JobStatus, **kwargs) -> bool:
        return self._fenced_end("write the final status", job_store.finish_job, status=status, **kwargs)

    def release(self, reason: str) -> bool:
        return self._fenced_end("give the job back", job_store.release_job, reason=reason)

    def trained_tokens(self) -> int | None:
        """Tokens over every stored step (this attempt's buffer written first); None when the lease is gone."""
        if not self.flush():
            return None
        try:
            return self.read(job_store.trained_tokens_total)
        except LeaseGone:
            return None

    def read(self, function, **kwargs):
        """A read for this job (not fenced), waiting for the database within the lease."""
        def call():
            with session_scope(self.settings) as session:
                return function(session, job_id=self.job_id, **kwargs)

        return self._retrying(function.__name__, call)

    def _fenced_end(self, what: str, function, **kwargs) -> bool:
        if not self.flush():
            return False
        try:
            done = self._retrying(what, lambda: self._call(function, **kwargs))
        except LeaseGone:
            return False
        if not done:
            self.held = False
            log.warning("job %s: lease lost (attempt %s); nothing written", self.job_id, self.attempt)
        return bool(done)

    def _retrying(self, what: str, call):
        backoff = Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS)
        with self._lock:
            while self.held:
                try:
                    return call()
                except LeaseGone:
                    raise
                except Exception as error:
                    if not unreachable(error):
                        raise
                    left = self._margin_left()
                    if left <= 0:
                        log.error("job %s: could not %s: the database has been unreachable for most of the lease; "
                                  "giving the job up without writing (another worker may own it by now)",
                                  self.job_id, what)
                        self._drop()
                        break
                    delay = min(backoff.next(), left)
                    log.warning("job %s: could not %s (database unreachable: %s); retrying in %.1f s, for at most "
                                "%.0f s more (the lease)", self.job_id, what, first_line(error), delay, left)
                    time.sleep(delay)
        raise LeaseGone

    def _call(self, function, **kwargs):
        with session_scope(self.settings) as session:
            return function(session, job_id=self.job_id, owner=self.owner, attempt=self.attempt, **kwargs)


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
