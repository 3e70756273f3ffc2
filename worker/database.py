"""Waiting for the database: which errors mean it is unreachable, and backing off while it is.

A worker host outlives database restarts, failovers and partitions: `dora worker`, the
reconciler and a job's claim wait for the database (logged, with exponential backoff) instead of
exiting with a traceback, and a job's lease (worker/lease.py) retries its writes within the lease.
What counts as unreachable is what the API answers with a 503 (api/unavailable.py): connection
refused or reset, a connect or statement timeout, a pool with no connection to give, a server
shutting down. Anything else (a bug, a constraint) is raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

log = logging.getLogger("worker.database")

T = TypeVar("T")

FIRST_WAIT_SECONDS = 1.0
MAX_WAIT_SECONDS = 30.0


def unreachable(error: BaseException) -> bool:
    """True for errors that say the database cannot be reached right now, not that a query is wrong."""
    if isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        return type(error.orig).__name__ in ("QueryCanceled", "AdminShutdown", "CannotConnectNow")
    return False


def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


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
