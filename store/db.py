"""Engines and sessions, built from the database settings; one engine per database URL per process.

SQLite gets WAL and a busy timeout so the API and a worker can share the file; PostgreSQL
gets a pool sized for the API's thread pool, with pre-ping on by default: a connection that a
PostgreSQL restart (or an idle timeout, or pg_terminate_backend) broke is found at checkout and
replaced, instead of failing the request that drew it. Without pre-ping SQLAlchemy would only
notice on first use, after the request's statement failed (a 500).

The connection budget (docs/architecture.md, "Connection budget"): every process may hold up to
pool + overflow connections, so processes x (pool + overflow) must stay within PostgreSQL's
max_connections less its reserved slots. With `db_connection_budget` set, each process keeps its
pool within its share (`pool_limits`); either way each process checks at its first connection
(`check_connection_budget`: `SHOW max_connections`, and the other dora-tuner processes connected,
told apart by their `application_name`) and logs a warning when the plan exceeds the server.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from store import db_deadline
from store.settings import DatabaseSettings, SessionSettings

# the server's statement_timeout normally ends a slow statement; the client deadline is for a
# server that cannot even be told (a partition)
STATEMENT_GRACE_SECONDS = 2.0
# every connection of a dora-tuner process says `dora-tuner/<host>/<pid>`: the budget check counts processes by it
APPLICATION_NAME = "dora-tuner"

log = logging.getLogger("store.db")

_lock = threading.Lock()
_engines: dict[str, Engine] = {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def build_engine(database_url: str, *, pool_size: int = 20, max_overflow: int = 20, pre_ping: bool = True,
                 connect_timeout: int = 5, statement_timeout: float = 30.0, pool_timeout: float = 5.0) -> Engine:
    """A new engine for `database_url` (creates the SQLite file's folder when needed).

    PostgreSQL connections get a connect timeout, a server-side statement timeout and TCP
    keepalives plus TCP_USER_TIMEOUT (a peer that vanished without closing is noticed in seconds,
    not after the kernel's ~15 minutes of retransmissions); the pool gives up on a checkout after
    `pool_timeout`. Each of these ends in an error the API answers with a 503.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        pool = {} if url.database in (None, "", ":memory:") else {  # a file: a QueuePool, sized like PostgreSQL's
            "pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {
        "connect_timeout": connect_timeout,
        "options": f"-c statement_timeout={int(statement_timeout * 1000)}",
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        "tcp_user_timeout": int((connect_timeout + statement_timeout) * 1000),
    }
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800,
                           pool_timeout=pool_timeout, connect_args=connect_args)
    event.listen(engine, "do_connect", _name_connection)
    # pre-ping and every statement under a client-side deadline (store/db_deadline.py)
    db_deadline.install(engine, statement_seconds=statement_timeout + STATEMENT_GRACE_SECONDS,
                        ping_seconds=connect_timeout if pre_ping else None)
    return engine


def _name_connection(_dialect, _record, _cargs, cparams) -> None:
    """`application_name` per process, set at connect time (a forked job process gets its own pid)."""
    cparams.setdefault("application_name", process_name())


def process_name() -> str:
    return f"{APPLICATION_NAME}/{socket.gethostname()[:40]}/{os.getpid()}"


def pool_limits(settings: DatabaseSettings) -> tuple[int, int]:
    """(pool size, max overflow) of one process: DORA_DB_POOL_SIZE and DORA_DB_MAX_OVERFLOW, kept within
    the process's share of DORA_DB_CONNECTION_BUDGET when one is set:

        share = budget // processes
        pool = min(pool size, ceil(share / 2)), overflow = min(max overflow, share - pool)
    """
    pool, overflow = settings.db_pool_size, settings.db_max_overflow
    if not settings.db_connection_budget:
        return pool, overflow
    share = max(1, settings.db_connection_budget // settings.db_processes)
    pool = max(1, min(pool, math.ceil(share / 2)))
    return pool, max(0, min(overflow, share - pool))


@dataclass(frozen=True)
class ServerConnections:
    """What a PostgreSQL server allows and holds, as `check_connection_budget` reads it."""

    max_connections: int
    reserved: int  # superuser_reserved_connections + reserved_connections (PostgreSQL 16+)
    processes: int  # dora-tuner processes with a connection open now, this one included
    open: int  # connections open now, every client's

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved


def budget_warnings(settings: DatabaseSettings, server: ServerConnections) -> list[str]:
    """Why this deployment's pools could exhaust the server; empty when they fit."""
    pool, overflow = pool_limits(settings)
    per_process, budget = pool + overflow, settings.db_connection_budget
    processes = max(settings.db_processes, server.processes)
    found, fix = [], ("set DORA_DB_CONNECTION_BUDGET and DORA_DB_PROCESSES, or lower DORA_DB_POOL_SIZE and "
                      "DORA_DB_MAX_OVERFLOW (docs/architecture.md, \"Connection budget\")")
    if budget and budget > server.available:
        found.append(f"DORA_DB_CONNECTION_BUDGET is {budget} connections but PostgreSQL accepts "
                     f"{server.available} from ordinary users (max_connections {server.max_connections} less "
                     f"{server.reserved} reserved): lower the budget or raise max_connections")
    if budget and server.processes > settings.db_processes:
        found.append(f"{server.processes} dora-tuner processes are connected to this database but DORA_DB_PROCESSES "
                     f"is {settings.db_processes}: the budget is shared among fewer processes than there are")
    if processes * per_process > server.available:
        found.append(f"{processes} processes x (pool {pool} + overflow {overflow}) = {processes * per_process} "
                     f"connections at full load, over the {server.available} PostgreSQL accepts (max_connections "
                     f"{server.max_connections} less {server.reserved} reserved; {server.open} open now): "
                     f"under load requests will fail with 'too many clients'; {fix}")
    return found


def read_server_connections(dbapi_connection) -> ServerConnections:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int"
            " + coalesce(current_setting('reserved_connections', true), '0')::int,"
            " (SELECT count(DISTINCT application_name) FROM pg_stat_activity"
            "   WHERE datname = current_database() AND application_name LIKE %s),"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
            (f"{APPLICATION_NAME}/%",))
        max_connections, reserved, processes, open_now = cursor.fetchone()
    finally:
        cursor.close()
        dbapi_connection.rollback()  # the pool gets the connection back as it was: no transaction
    return ServerConnections(max_connections=max_connections, reserved=reserved, processes=max(1, processes),
                             open=open_now)


def check_connection_budget(settings: DatabaseSettings, dbapi_connection) -> list[str]:
    """Log (warning) and return what `budget_warnings` finds on this server; a failed check is only logged."""
    try:
        server = read_server_connections(dbapi_connection)
    except Exception as error:  # noqa: BLE001 - a check at start must never stop the process
        log.info("connection budget not checked: %s", str(error).splitlines()[0][:200] if str(error) else error)
        return []
    found = budget_warnings(settings, server)
    for warning in found:
        log.warning("database connection budget: %s", warning)
    return found


def watch_connection_budget(engine: Engine, settings: DatabaseSettings) -> None:
    """Check the budget at the engine's first connection (PostgreSQL): at start, since the API's schema
    check and the worker's wait for the database are the first things either does."""
    if engine.dialect.name == "postgresql":
        event.listen(engine, "first_connect",
                     lambda dbapi_connection, _record: check_connection_budget(settings, dbapi_connection))


def get_engine(settings: DatabaseSettings) -> Engine:
    """The process-wide engine for the settings' database URL, its pool within the connection budget."""
    with _lock:
        engine = _engines.get(settings.database_url)
        if engine is None:
            pool_size, max_overflow = pool_limits(settings)
            engine = build_engine(settings.database_url, pool_size=pool_size,
                                  max_overflow=max_overflow, pre_ping=settings.db_pool_pre_ping,
                                  connect_timeout=settings.db_connect_timeout_seconds,
                                  statement_timeout=settings.db_statement_timeout_seconds,
                                  pool_timeout=settings.db_pool_timeout_seconds)
            watch_connection_budget(engine, settings)
            _engines[settings.database_url] = engine
        return engine


def forget_inherited_connections() -> None:
    """In a forked child: drop the pooled connections inherited from the parent without closing
    them (they belong to the parent's sockets), so the child opens its own."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)


def session_factory(settings: SessionSettings) -> sessionmaker[Session]:
    # the broker: webhook deliveries a transaction wrote are published right after its commit (store/webhooks.py)
    return sessionmaker(bind=get_engine(settings), expire_on_commit=False, info={"broker_url": settings.broker_url})


@contextmanager
def session_scope(settings: SessionSettings) -> Iterator[Session]:
    """A session for one unit of work outside a request (CLI, worker); rolled back on error."""
    with session_factory(settings)() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise


def dispose_engines() -> None:
    """Close every pooled connection (tests, and after a fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
