"""Which database errors mean "unreachable right now", written once for the API and the workers.

The API answers these with a 503 and Retry-After (api/unavailable.py); the workers wait and retry
them with backoff (worker/database.py). Connection refused or reset, a connect or statement
timeout, a pool with no connection to give within its checkout timeout, a failed ping, a server
shutting down. Anything else (a bug, a constraint) is not: it is raised at once.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc


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
    """The error's first line, short enough for a log line."""
    return (str(error).splitlines() or [type(error).__name__])[0][:200]
