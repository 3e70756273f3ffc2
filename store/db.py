"""Engines and sessions, built from the database settings; one engine per database URL per process.

SQLite gets WAL and a busy timeout so the API and a worker can share the file; PostgreSQL
gets a pool sized for the API's thread pool, with pre-ping on by default: a connection that a
PostgreSQL restart (or an idle timeout, or pg_terminate_backend) broke is found at checkout and
replaced, instead of failing the request that drew it. Without pre-ping SQLAlchemy would only
notice on first use, after the request's statement failed (a 500).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from store import db_deadline
from store.settings import DatabaseSettings, SessionSettings

# the server's statement_timeout normally ends a slow statement; the client deadline is for a
# server that cannot even be told (a partition)
STATEMENT_GRACE_SECONDS = 2.0

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
    # pre-ping and every statement under a client-side deadline (store/db_deadline.py)
    db_deadline.install(engine, statement_seconds=statement_timeout + STATEMENT_GRACE_SECONDS,
                        ping_seconds=connect_timeout if pre_ping else None)
    return engine


def get_engine(settings: DatabaseSettings) -> Engine:
    """The process-wide engine for the settings' database URL."""
    with _lock:
        engine = _engines.get(settings.database_url)
        if engine is None:
            engine = build_engine(settings.database_url, pool_size=settings.db_pool_size,
                                  max_overflow=settings.db_max_overflow, pre_ping=settings.db_pool_pre_ping,
                                  connect_timeout=settings.db_connect_timeout_seconds,
                                  statement_timeout=settings.db_statement_timeout_seconds,
                                  pool_timeout=settings.db_pool_timeout_seconds)
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
