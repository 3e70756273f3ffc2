"""The tracking sink (worker/tracking.py) without a server: what training hands it is delivered in
order, and a backend that raises or hangs never blocks the training side nor loses track of what
was not logged."""

from __future__ import annotations

import threading
import time

from worker.tracking import JobTracking, TrackingSink


class Recording:
    """A backend that keeps what it was sent; `fail` calls raise first (a server that comes back)."""

    label = "Test"

    def __init__(self, fail: int = 0, gate: threading.Event | None = None) -> None:
        self.fail, self.gate = fail, gate
        self.calls: list[tuple] = []
        self.attempts = 0

    def _call(self, *call) -> None:
        self.attempts += 1
        if self.gate is not None:
            self.gate.wait()  # a server that does not answer
        if self.fail:
            self.fail -= 1
            raise ConnectionError("connection refused")
        self.calls.append(call)

    def start(self) -> None:
        self._call("start")

    def log_metrics(self, points):
        self._call("metrics", points)

    def log_samples(self, step, samples):
        self._call("samples", step, samples)

    def finish(self) -> None:
        self._call("finish")


def _feed(sink: TrackingSink, steps: range) -> float:
    """The training side: every step's metrics (samples at step 2); returns the seconds it took."""
    started = time.monotonic()
    for step in steps:
        sink.metrics(step, {"loss": 1.0 / step, "note": "not a number", "flag": True})
        if step == 2:
            sink.samples(2, [{"index": 0, "answer": "4"}])
    return time.monotonic() - started


def test_every_step_is_delivered_in_order_with_the_samples_after_their_step():
    backend = Recording()
    sink = TrackingSink(backend, buffer_points=100, flush_seconds=10)
    _feed(sink, range(1, 6))
    sink.close()
    assert sink.report() is None
    assert backend.calls[0] == ("start",) and backend.calls[-1] == ("finish",)
    sent = [(kind, args) for kind, *args in backend.calls[1:-1]]
    steps = [step for kind, (points,) in [s for s in sent if s[0] == "metrics"] for step, _ in points]
    assert steps == [1, 2, 3, 4, 5]  # each once, ascending; non-numbers dropped
    points = dict(p for kind, (batch,) in [s for s in sent if s[0] == "metrics"] for p in batch)
    assert points[4] == {"loss": 0.25}
    first_samples = next(i for i, (kind, _) in enumerate(sent) if kind == "samples")
    before = [step for kind, args in sent[:first_samples] if kind == "metrics" for step, _ in args[0]]
    assert 2 in before and sent[first_samples][1][0] == 2


def test_a_dead_server_never_slows_training_and_the_report_names_the_steps():
    backend = Recording(fail=10**6)
    sink = TrackingSink(backend, buffer_points=100, flush_seconds=0.3, retry_seconds=0.05)
    fed = _feed(sink, range(1, 51))
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 3  # retried until the flush limit, then given up
    assert fed < 0.5  # 50 steps (bound generous for a loaded CI host: no I/O is done on this side)
    assert sink.lost_steps() == list(range(1, 51))
    assert sink.report() == ("Test: the metrics of 50 steps (steps 1-50) and 1 evaluations' samples were not "
                             "logged: ConnectionError: connection refused")


def test_a_dead_server_is_retried_after_a_pause_not_on_every_step():
    backend = Recording(fail=10**6)
    sink = TrackingSink(backend, buffer_points=100, flush_seconds=0.2, retry_seconds=30)
    sink.metrics(1, {"loss": 1.0})
    time.sleep(0.2)  # the first try failed: the thread pauses for 30 s
    _feed(sink, range(2, 51))
    time.sleep(0.2)
    assert backend.attempts == 1
    sink.close()  # one last try now, then none past the flush limit
    assert backend.attempts == 2 and sink.lost_steps() == list(range(1, 51))


def test_a_hung_server_costs_the_flush_limit_once_and_is_reported():
    gate = threading.Event()
    backend = Recording(gate=gate)
    sink = TrackingSink(backend, buffer_points=100, flush_seconds=0.5)
    fed = _feed(sink, range(1, 21))
    started = time.monotonic()
    sink.close()
    waited = time.monotonic() - started
    assert fed < 0.5 and 0.45 <= waited < 3
    assert sink.lost_steps() == list(range(1, 21))
    assert "were not logged: the server did not answer within 0.5s" in sink.report()
    gate.set()  # the thread ends


def test_a_full_buffer_drops_the_oldest_and_still_counts_them_as_not_logged():
    backend = Recording(fail=10**6)
    sink = TrackingSink(backend, buffer_points=3, flush_seconds=0.2, retry_seconds=0.05)
    for step in range(1, 11):
        sink.metrics(step, {"loss": 1.0})
    sink.close()
    assert sink.lost_steps() == list(range(1, 11))
    assert "(steps 1-10)" in sink.report()


def test_a_server_that_comes_back_gets_everything_once():
    backend = Recording(fail=2)  # start, then the first delivery fail
    sink = TrackingSink(backend, buffer_points=100, flush_seconds=10, retry_seconds=0.05)
    _feed(sink, range(1, 4))
    sink.close()
    assert sink.report() is None
    steps = [step for kind, *args in backend.calls if kind == "metrics" for step, _ in args[0]]
    assert steps == [1, 2, 3]


def test_job_tracking_reports_each_integration_that_lost_something_as_one_event():
    good, bad = Recording(), Recording(fail=10**6)
    bad.label = "Other"
    tracking = JobTracking([TrackingSink(good, buffer_points=10, flush_seconds=5),
                            TrackingSink(bad, buffer_points=10, flush_seconds=0.2, retry_seconds=0.05)])
    tracking.metrics(1, {"loss": 2.0})
    events = []
    tracking.close(lambda message, **kw: events.append((message, kw)))
    assert [(m.split(":")[0], kw["data"]) for m, kw in events] == [
        ("Other", {"integration": "Other", "steps_not_logged": [1]})]
