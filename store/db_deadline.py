"""A client-side deadline for every PostgreSQL round trip: a partitioned database cannot hang us.

The server's statement_timeout cancels slow statements, connect_timeout bounds new connections,
and TCP keepalives / TCP_USER_TIMEOUT notice a peer whose packets vanish; none of them helps when
the path to the database accepts bytes and answers nothing (a proxy or load balancer whose
backend is partitioned away: the kernel ACKs, nobody replies). A statement or ping then blocks its
thread for as long as the socket lives. So each round trip is armed with a deadline here: a
watchdog thread shuts the connection's socket down when it passes, the blocked call fails at once
with a disconnect error, SQLAlchemy invalidates the connection, and the API answers 503.

The pool's ping (pre-ping) runs in the pool's "checkout" event under the same deadline, instead
of SQLAlchemy's built-in pre_ping, which cannot be armed (it runs before any event fires).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc

log = logging.getLogger("store.db_deadline")


class Watchdog:
    """Shuts down the socket of a DBAPI connection whose armed deadline passes."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []  # (deadline, token, socket fd)
        self._live: dict[int, int] = {}  # token -> fd, while armed
        self._tokens = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.fired = 0

    def arm(self, fd: int, seconds: float) -> int:
        with self._cond:
            token = next(self._tokens)
            self._live[token] = fd
            heapq.heappush(self._heap, (time.monotonic() + seconds, token, fd))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="db-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._live.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait(timeout=60)
                    continue
                deadline, token, fd = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(timeout=delay)
                    continue
                heapq.heappop(self._heap)
                self._live.pop(token, None)
                self.fired += 1
                _shut_down(fd)


def _shut_down(fd: int) -> None:
    """End the TCP connection under `fd` (the blocked reader sees EOF); the owner closes the fd."""
    try:
        duplicate = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
        log.warning("database round trip passed its deadline: connection shut down")
    except OSError:
        pass
    finally:
        duplicate.close()


WATCHDOG = Watchdog()


def _socket_fd(dbapi_connection) -> int | None:
    try:
        return dbapi_connection.pgconn.socket  # psycopg 3
    except Exception:  # noqa: BLE001 - closed or not psycopg: nothing to arm
        return None


@contextmanager
def deadline(dbapi_connection, seconds: float):
    fd = _socket_fd(dbapi_connection)
    token = WATCHDOG.arm(fd, seconds) if fd is not None and fd >= 0 else None
    try:
        yield
    finally:
        if token is not None:
            WATCHDOG.disarm(token)


def install(engine: Engine, *, statement_seconds: float, ping_seconds: float | None) -> None:
    """Arm every statement (statement_seconds: a little above the server's statement_timeout,
    which normally ends it first) and ping each connection at checkout (ping_seconds)."""

    @event.listens_for(engine, "before_cursor_execute")
    def _arm(conn, cursor, statement, parameters, context, executemany):
        fd = _socket_fd(conn.connection.dbapi_connection)
        if fd is not None and fd >= 0:
            conn.info.setdefault("deadline_tokens", []).append(WATCHDOG.arm(fd, statement_seconds))

    def _disarm(conn) -> None:
        tokens = conn.info.get("deadline_tokens")
        while tokens:
            WATCHDOG.disarm(tokens.pop())

    @event.listens_for(engine, "after_cursor_execute")
    def _done(conn, cursor, statement, parameters, context, executemany):
        _disarm(conn)

    @event.listens_for(engine, "handle_error")
    def _failed(context):
        if context.connection is not None:
            _disarm(context.connection)

    if ping_seconds is None:
        return

    @event.listens_for(engine.pool, "checkout")
    def _ping(dbapi_connection, connection_record, connection_proxy):
        """Pessimistic disconnect handling: a connection that cannot answer SELECT 1 in time is
        discarded and the pool tries a fresh one (SQLAlchemy retries the checkout)."""
        try:
            with deadline(dbapi_connection, ping_seconds):
                cursor = dbapi_connection.cursor()
                try:
                    cursor.execute("SELECT 1")
                finally:
                    cursor.close()
                if not dbapi_connection.autocommit:
                    dbapi_connection.rollback()  # hand the connection out idle, as the pool found it
        except Exception as error:  # any failure means this connection is unusable
            raise sa_exc.DisconnectionError(f"ping failed: {type(error).__name__}") from error
