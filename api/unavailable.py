"""A dependency that is down is a 503 with Retry-After, never a 500.

Which exceptions mean "the database (or the broker) cannot be reached right now": connection
refused or reset, a connect or statement timeout, a pool with no connection to give within its
checkout timeout. The client can do nothing about these but retry, so they are 503s in OpenAI's
error shape with a `Retry-After` header; a bug (anything else) is still a 500.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.errors import error_body
from store.db_errors import unreachable

log = logging.getLogger("api.unavailable")

RETRY_AFTER_SECONDS = 5


# the one classification of "the database is unreachable right now", shared with the workers
is_database_unavailable = unreachable


def unavailable_response(what: str = "database") -> JSONResponse:
    body = error_body(f"The service's {what} is unavailable right now; retry in a few seconds.",
                      type="server_error", code="service_unavailable")
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def database_error_handler(request: Request, error: SQLAlchemyError) -> JSONResponse:
    if is_database_unavailable(error):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    str(error).splitlines()[0][:200])
        return unavailable_response()
    raise error  # a real bug: the catch-all 500 handler logs it
