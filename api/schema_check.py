"""The start-up schema check, which waits for an unreachable database instead of exiting.

An API started before its database (a reboot, a compose file without health checks, a failover)
used to exit with a traceback. Now the first check runs at start: an outdated schema still stops
the start (the operator must run `dora migrate`), but an unreachable database only logs a
warning; the API serves at once (every request that needs the database is a 503 with
Retry-After until it is back) and a background task checks again with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from store.migrate import SchemaOutdated, check_schema

log = logging.getLogger("api.schema_check")

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


async def check_schema_until_reachable(engine: Engine) -> asyncio.Task | None:
    """Check now; if the database cannot be reached, keep checking in the background (the task)."""
    try:
        await run_in_threadpool(check_schema, engine)
        return None
    except SchemaOutdated:
        raise
    except SQLAlchemyError as error:
        log.warning("database unreachable at start (%s); serving 503s and retrying",
                    str(error).splitlines()[0][:200])
    return asyncio.create_task(_retry(engine))


async def _retry(engine: Engine) -> None:
    delay = FIRST_RETRY_SECONDS
    while True:
        await asyncio.sleep(delay)
        try:
            await run_in_threadpool(check_schema, engine)
        except SchemaOutdated as error:
            log.error("%s", error)  # reachable but not migrated: requests keep failing until migrated
        except SQLAlchemyError as error:
            delay = min(delay * 2, MAX_RETRY_SECONDS)
            log.warning("database still unreachable (%s); next check in %.0f s", str(error).splitlines()[0][:200],
                        delay)
            continue
        else:
            log.info("database reachable; schema is current")
        return
