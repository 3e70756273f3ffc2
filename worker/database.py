"""Waiting for the database: which errors mean it is unreachable, and backing off while it is.

A worker host outlives database restarts, failovers and partitions: `dora worker`, the
reconciler and a job's claim wait for the database (logged, with exponential backoff) instead of
exiting with a traceback, and a job's lease (worker/lease.py) retries its writes within the lease.
What counts as unreachable is what the API answers with a 503: `store.db_errors.unreachable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from store.db_errors import first_line, unreachable

__all__ = ["Backoff", "call_when_reachable", "first_line", "unreachable"]

log = logging.getLogger("worker.database")

T = TypeVar("T")

FIRST_WAIT_SECONDS = 1.0
MAX_WAIT_SECONDS = 30.0


class Backoff:
    """Exponential delays: first, 2 x first, ... capped at `most`."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self.delay, self.failures = first, 0

    def next(self) -> float:
        delay, self.failures = self.delay, self.failures + 1
        self.delay = min(self.delay * 2, self.most)
        return delay


def call_when_reachable(function: Callable[[], T], *, what: str, stopped: Callable[[], bool] = lambda: False,
                        wait: Callable[[float], object] = time.sleep, first: float = FIRST_WAIT_SECONDS,
                        most: float = MAX_WAIT_SECONDS) -> T:
    """`function()`, called again with backoff for as long as it fails because the database is
    unreachable, each wait logged; raises the last error once `stopped()` (a shutdown) is True."""
    backoff = Backoff(first, most)
    started = time.monotonic()
    while True:
        try:
            result = function()
        except Exception as error:
            if not unreachable(error) or stopped():
                raise
            delay = backoff.next()
            log.warning("%s: database unreachable (%s); waiting for the database, next try in %.0f s",
                        what, first_line(error), delay)
            wait(delay)
            if stopped():
                raise
            continue
        if backoff.failures:
            log.info("%s: database reachable after %.0f s", what, time.monotonic() - started)
        return result
