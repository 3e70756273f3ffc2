"""The error body every failure is answered with (OpenAI's shape), and how routes document it.

`api/errors.py` builds the bodies; this is their schema for the OpenAPI document, so that a
client (or a schema-driven fuzzer) sees the 400, 404, 413, 429 ... it will actually get, and
`error_responses(...)` is what a route passes as `responses=` for the errors of its own.
The errors every route shares (400, 401, 404 on a path with ids, 429, 503) are added to every
operation in api/openapi.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# invalid_request_error: the request is wrong; requests: over the rate limit; insufficient_quota: over
# a quota of the tenant; server_error: ours (a bug, or the database is unavailable)
ErrorType = Literal["invalid_request_error", "requests", "insufficient_quota", "server_error"]


class Error(BaseModel):
    message: str = Field(description="What went wrong, for a person")
    type: ErrorType = Field(description="The kind of error, as OpenAI names them")
    param: str | None = Field(description="The request field, query parameter or header at fault, if one is")
    code: str | None = Field(description="A stable machine-readable code, e.g. invalid_value, rate_limit_exceeded")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="More errors of the same request (other fields, other lines of a dataset)")


class ErrorResponse(BaseModel):
    error: Error


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again",
                               "schema": {"type": "integer", "minimum": 1}}}
RATE_LIMIT_HEADERS = RETRY_AFTER | {
    "x-ratelimit-limit-requests": {"description": "Requests per minute allowed (per API process)",
                                   "schema": {"type": "integer"}},
    "x-ratelimit-remaining-requests": {"description": "Requests left now", "schema": {"type": "integer"}},
    "x-ratelimit-reset-requests": {"description": "Time until one more request is allowed, e.g. 1.2s",
                                   "schema": {"type": "string"}},
}

DESCRIPTIONS = {
    400: "Invalid request: a parameter, header or the body is wrong (`param` names it)",
    401: "Missing or invalid API key",
    403: "Forbidden",
    404: "No such object for this API key's tenant",
    409: "Conflict with the object's state",
    413: "Too large: the body or the file is over this server's limit",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    429: ("Too many requests (`type` requests, code `rate_limit_exceeded`) or over a quota of the tenant "
          "(`type` insufficient_quota, code `quota_exceeded`); Retry-After says when to try again"),
    503: "The database is unavailable; Retry-After says when to try again",
}
HEADERS = {429: RATE_LIMIT_HEADERS, 503: RETRY_AFTER}
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}  # api/openapi.py puts the schema there


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the error body, as JSON whatever the route's
    own media type; `descriptions` (`d409="..."`) say what a status means on that route."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        response: dict[str, Any] = {"description": descriptions.get(f"d{code}", DESCRIPTIONS[code]),
                                    "content": {"application/json": {"schema": ERROR_REF}}}
        if code in HEADERS:
            response["headers"] = HEADERS[code]
        responses[code] = response
    return responses
