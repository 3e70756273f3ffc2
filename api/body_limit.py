"""Request bodies are size-limited while they stream, before any route parses them.

JSON bodies (every request but an upload) are small: they are read here up to
`max_json_body_bytes` and replayed to the app, and one that is longer, by its Content-Length or
by what actually arrives, is a 413 at the first byte past the limit, never buffered whole.
Uploads (multipart/form-data) are streamed to disk by api/uploads.py, which enforces their own,
larger limit as the file arrives; here they are only refused early when Content-Length already
says they are too large. Runs after authentication, so a body is never read for a caller who
has no valid key.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from api.errors import ApiError, error_body
from api.uploads import ENVELOPE
from api.uploads import too_large as upload_too_large

MULTIPART = b"multipart/form-data"


def too_large(limit: int) -> JSONResponse:
    return as_response(ApiError(413, f"The request body is too large: the limit is {limit} bytes",
                                code="request_too_large"))


def as_response(error: ApiError) -> JSONResponse:
    body = error_body(error.message, type=error.type, param=error.param, code=error.code)
    return JSONResponse(body, status_code=error.status_code)


def _header(scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def _declared_length(scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None or not value.isdigit() or len(value) > 18:
        return None if value is None else -1  # -1: not a length (h11 refuses it before us, in practice)
    return int(value)


class LimitBody:
    def __init__(self, app, *, max_json_bytes: int, max_upload_bytes: int) -> None:
        self.app, self.max_json_bytes, self.max_upload_bytes = app, max_json_bytes, max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return await self.app(scope, receive, send)
        is_upload = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower() == MULTIPART
        limit = self.max_upload_bytes + ENVELOPE if is_upload else self.max_json_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            refusal = as_response(upload_too_large(self.max_upload_bytes)) if is_upload else too_large(limit)
            return await refusal(scope, receive, send)
        if is_upload:
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await too_large(limit)(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as the server would

        return await self.app(scope, replay, send)
