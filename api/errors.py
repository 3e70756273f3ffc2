"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every failure.

Client mistakes are 4xx naming the field (`param`) and the problem (`message`); FastAPI's
validation errors are rewritten into that shape (400, like OpenAI). Only real bugs reach the
catch-all, which logs the traceback and answers a bare 500.

A client that goes away while its request body arrives (an upload cut mid-way: Starlette raises
`ClientDisconnect`) is no error of the server: it is logged at info, without a traceback, and
answered 499 (nginx's "client closed request"), which nobody receives but /metrics counts.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from dora_contract.errors import is_union_member

log = logging.getLogger("api.errors")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned; no HTTP standard has one


class ApiError(Exception):
    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status_code, self.message, self.param, self.code, self.type = status_code, message, param, code, type
        self.headers, self.details = headers, details


def bad_request(message: str, *, param: str | None = None, code: str | None = None, **kw: Any) -> ApiError:
    return ApiError(400, message, param=param, code=code, **kw)


def not_found(what: str, object_id: str, *, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {what}: '{object_id}'", param=param, code=f"{what.replace(' ', '_')}_not_found")


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None,
               details: list | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": type, "param": param, "code": code}
    if details:
        error["details"] = details
    return {"error": error}


def _param_from_loc(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    # pydantic adds the union member name ("int", "literal['auto']") to the location: drop it
    return ".".join(p for p in parts if not is_union_member(p)) or None


def _validation_message(errors: list[dict[str, Any]], param: str | None) -> str:
    first = errors[0]
    kind = first.get("type")
    if kind == "json_invalid":
        return f"The request body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}"
    if param is None and kind == "missing":
        return "The request body is missing: send a JSON object"
    if param is None and kind in ("model_attributes_type", "dict_type"):
        return "The request body must be a JSON object"
    if kind == "missing":
        return f"Missing required parameter: '{param}'"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: '{param}'"
    # a union ("auto" or an integer) fails once per member: say all of it in one sentence
    reasons = list(dict.fromkeys(e.get("msg", "invalid value") for e in errors))
    reason = " or ".join(r[0].lower() + r[1:] if i else r for i, r in enumerate(reasons))
    return f"Invalid value for '{param}': {reason}" if param else reason


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    body = error_body(exc.message, type=exc.type, param=exc.param, code=exc.code, details=exc.details)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _own_param(error: dict[str, Any]) -> str | None:
    """The `param` of an error from a check over a whole body (api/schemas/common.py StrictModel),
    which names the place itself (in its context) below the model's own location."""
    where = (error.get("ctx") or {}).get("param")
    if where is None:
        return None
    return ".".join(p for p in (_param_from_loc(tuple(error.get("loc", ()))), where) if p and p != "body") or None


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors()) or [{"msg": "invalid request"}]
    first = errors[0]
    if (first.get("ctx") or {}).get("param") is not None:  # its message says what and where
        body = error_body(first.get("msg", "invalid request"), type="invalid_request_error", param=_own_param(first),
                          code="invalid_value")
        return JSONResponse(body, status_code=400)
    param = None if first.get("type") == "json_invalid" else _param_from_loc(tuple(first.get("loc", ())))
    # a union (`'all-linear'` or a list of names) fails once per member: when one member got
    # further into the value (an item of the list), its error is the one that says what is wrong
    deeper = [e for e in errors if param and (_param_from_loc(tuple(e.get("loc", ()))) or "").startswith(param + ".")]
    if deeper:
        first = deeper[0]
        param = _param_from_loc(tuple(first.get("loc", ())))
    same = [e for e in errors if _param_from_loc(tuple(e.get("loc", ()))) == param]
    others = [{"param": _param_from_loc(tuple(e.get("loc", ()))), "message": e.get("msg")}
              for e in errors if e not in same and first.get("type") != "json_invalid"][:10]
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    body = error_body(_validation_message(same or [first], param), type="invalid_request_error", param=param,
                      code=code, details=others or None)
    return JSONResponse(body, status_code=400)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    messages = {404: "Not found", 405: "Method not allowed"}
    message = exc.detail if isinstance(exc.detail, str) else messages.get(exc.status_code, "HTTP error")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(error_body(message, type="invalid_request_error", code=code),
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _client_disconnected(request: Request, _: ClientDisconnect) -> Response:
    log.info("client disconnected during %s %s before its request was complete", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("The server had an error while processing your request.", type="server_error"),
                        status_code=500)


class AnswerUnexpected:
    """ASGI middleware: an exception no handler took becomes the 500 answer, and stops here.

    Starlette's outermost ServerErrorMiddleware also answers with `_unexpected`, but then
    re-raises (for servers to log), and uvicorn closes the connection on an exception from the
    app: the client's next request on that keep-alive connection failed. Here the error is
    logged and answered, and the connection stays usable. When the response had already
    started (a download failing mid-stream), the exception goes on up: only closing the
    connection tells the client that the body is cut short.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # logged by _unexpected with its traceback, answered 500
            if started:
                raise
            # a disconnect raised outside the routes (their handler answers the routes' own)
            answer = _client_disconnected if isinstance(exc, ClientDisconnect) else _unexpected
            response = await answer(Request(scope), exc)
            await response(scope, receive, send)


class RejectNulInUrl:
    """ASGI middleware: a URL whose path or query holds a NUL character is a 400.

    No id, cursor, filter or name here can contain one, and PostgreSQL refuses NUL in text, so
    without this check such a URL reached the database and came back as a 500.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]
                                        or b"\x00" in scope["query_string"]):
            body = error_body("The request URL contains a NUL character (%00), which no parameter accepts",
                              type="invalid_request_error", code="invalid_url")
            return await JSONResponse(body, status_code=400)(scope, receive, send)
        return await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """The handlers, and `AnswerUnexpected` around the routes: it sits inside every middleware
    added after this call (create_app adds all of its own after), so it takes every exception
    from the routes and their handlers (one that re-raises, too) and the middleware outside it
    sees an ordinary 500 (counted in the metrics). The `Exception` handler stays for errors from
    that middleware itself (answered by Starlette, then the connection is closed)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(AnswerUnexpected)
