"""Experiment tracking of one job (issue #26): its config, step metrics and samples to W&B / MLflow.

Training must never wait for a tracking server, so the training hooks only append to a bounded
buffer (`TrackingSink.metrics/samples`: no I/O, no lock held across a call) and one background
thread per integration delivers it in batches. A failed delivery keeps the batch and retries with
a growing pause; past `tracking_buffer_points` the oldest records are dropped. At the end of the
job `close()` waits at most `tracking_flush_seconds` for the rest (a hung server costs the job
that long, once), and `report()` says what was not logged, which the job records as one event.
Backends (worker/tracking_backends.py) are plain synchronous clients run only on that thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS, MOST_RETRY_SECONDS = 1.0, 30.0


class Backend(Protocol):
    """One tracking server's client; every call happens on the sink's thread and may raise or hang."""

    label: str  # "W&B", "MLflow": how events name it

    def start(self) -> None: ...  # create (or resume) the run and log the job's config
    def log_metrics(self, points: list[tuple[int, dict]]) -> None: ...  # [(step, {name: number})], steps ascending
    def log_samples(self, step: int, samples: list[dict]) -> None: ...
    def finish(self) -> None: ...


@dataclass
class Record:
    step: int
    metrics: dict | None = None  # a step's numbers
    samples: list[dict] | None = None  # an evaluation's samples


class TrackingSink:
    """The buffer and delivery thread of one backend."""

    def __init__(self, backend: Backend, *, buffer_points: int, flush_seconds: float,
                 retry_seconds: float = FIRST_RETRY_SECONDS) -> None:
        self.backend, self.flush_seconds, self.retry_seconds = backend, flush_seconds, retry_seconds
        self._buffer: deque[Record] = deque()
        self._capacity = buffer_points
        self._condition = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._in_flight: list[Record] = []  # the batch the thread is delivering
        self.dropped: list[Record] = []  # pushed out of a full buffer
        self.delivered_steps: set[int] = set()
        self.error: str | None = None  # the last delivery error
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tracking-{backend.label}", daemon=True)
        self._thread.start()

    # -- the training side: never blocks on I/O --------------------------------------------------------
    def metrics(self, step: int, values: dict) -> None:
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if numbers:
            self._add(Record(step=step, metrics=numbers))

    def samples(self, step: int, samples: list[dict]) -> None:
        if samples:
            self._add(Record(step=step, samples=list(samples)))

    def _add(self, record: Record) -> None:
        with self._condition:
            self._buffer.append(record)
            while len(self._buffer) > self._capacity:
                self.dropped.append(self._buffer.popleft())
            self._condition.notify()

    def begin_close(self) -> None:
        """Deliver what is left, then finish the run (the thread ends)."""
        with self._condition:
            self._closing = True
            self._deadline = time.monotonic() + self.flush_seconds  # the thread gives up retrying then
            self._condition.notify()

    def wait(self, seconds: float) -> bool:
        """True once the thread ended; a hung one is left behind (a daemon) after `seconds`."""
        return self._done.wait(seconds)

    def close(self) -> None:
        self.begin_close()
        self.wait(self.flush_seconds)

    def lost_steps(self) -> list[int]:
        """Steps whose metrics were not delivered (dropped, or still buffered)."""
        with self._condition:
            lost = self.dropped + self._in_flight + list(self._buffer)
        return sorted({r.step for r in lost if r.metrics is not None})

    def report(self) -> str | None:
        """What was not logged (None: everything was), for the job's event."""
        with self._condition:
            lost = self.dropped + self._in_flight + list(self._buffer)
        if not lost and self._done.is_set():
            return None
        reason = self.error or f"the server did not answer within {self.flush_seconds:g}s"
        if not lost:
            return f"{self.backend.label}: the run may not be complete (not finished): {reason}"
        steps = sorted({r.step for r in lost if r.metrics is not None})
        sample_sets = sum(1 for r in lost if r.samples is not None)
        parts = []
        if steps:
            parts.append(f"the metrics of {len(steps)} steps ({_ranges(steps)})")
        if sample_sets:
            parts.append(f"{sample_sets} evaluations' samples")
        what = " and ".join(parts)
        return f"{self.backend.label}: {what} were not logged: {reason}"

    # -- the delivery thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        started, pause = False, self.retry_seconds
        while True:
            with self._condition:
                while not self._buffer and not self._closing:
                    self._condition.wait()
                closing = self._closing
                self._in_flight, self._buffer = list(self._buffer), deque()
            batch = self._in_flight
            try:
                if not started:
                    self.backend.start()
                    started = True
                self._deliver(batch)
                with self._condition:
                    self._in_flight = []
                pause = self.retry_seconds
                if closing and not self._buffer:
                    self.backend.finish()
                    break
            except Exception as error:  # noqa: BLE001 - a tracking server's failure never reaches training
                message = f"{type(error).__name__}: {error}"[:300]
                if message != self.error:  # once per kind of failure, not once per retry
                    log.warning("tracking (%s): delivery failed (retrying): %s", self.backend.label, message)
                self.error = message
                with self._condition:  # keep the batch, oldest first, within the capacity
                    self._buffer.extendleft(reversed(self._in_flight))
                    self._in_flight = []
                    while len(self._buffer) > self._capacity:
                        self.dropped.append(self._buffer.popleft())
                    # the pause: new records do not cut it short (a dead server is not retried every step),
                    # close() does once, for a last try; after it, retries stop at the flush deadline
                    retry_at = min(time.monotonic() + pause, self._deadline)
                    was_closing = self._closing
                    while time.monotonic() < retry_at and self._closing == was_closing:
                        self._condition.wait(retry_at - time.monotonic())
                    if time.monotonic() >= self._deadline:
                        break
                pause = min(pause * 2, MOST_RETRY_SECONDS)
        self._done.set()

    def _deliver(self, batch: list[Record]) -> None:
        """Metrics merged per step, in order with the samples (W&B steps only go forward); what is
        delivered leaves `_in_flight`, so a failure keeps only the rest."""
        points: dict[int, dict] = {}
        for index, record in enumerate(batch):
            if record.metrics is not None:
                points.setdefault(record.step, {}).update(record.metrics)
                continue
            self._send_points(points)
            points = {}
            self.backend.log_samples(record.step, record.samples or [])
            with self._condition:
                self._in_flight = batch[index + 1:]
        self._send_points(points)

    def _send_points(self, points: dict[int, dict]) -> None:
        if points:
            self.backend.log_metrics(sorted(points.items()))
            self.delivered_steps.update(points)


def _ranges(steps: list[int]) -> str:
    """[1, 2, 3, 7] -> "steps 1-3, 7"."""
    spans: list[list[int]] = []
    for step in steps:
        if spans and step == spans[-1][1] + 1:
            spans[-1][1] = step
        else:
            spans.append([step, step])
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans[:5]) + (", ..." if len(spans) > 5 else "")
    return f"step{'s' if len(steps) > 1 else ''} {text}"


class JobTracking:
    """Every integration of one job: one sink each, fed by JobProgress's hooks."""

    def __init__(self, sinks: list[TrackingSink]) -> None:
        self.sinks = sinks

    def metrics(self, step: int, values: dict) -> None:
        for sink in self.sinks:
            sink.metrics(step, values)

    def samples(self, step: int, samples: list[dict]) -> None:
        for sink in self.sinks:
            sink.samples(step, samples)

    def close(self, event) -> None:
        """Flush every sink (their waits overlap: at most flush_seconds in all) and report each loss as an
        event `event(message, level=..., data=...)`."""
        deadline = time.monotonic() + max((s.flush_seconds for s in self.sinks), default=0)
        for sink in self.sinks:
            sink.begin_close()
        for sink in self.sinks:
            sink.wait(max(0.0, deadline - time.monotonic()))
        for sink in self.sinks:
            message = sink.report()
            if message:
                event(message, level="warning", data={"integration": sink.backend.label,
                                                      "steps_not_logged": sink.lost_steps()})
