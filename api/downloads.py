"""Streaming downloads with HTTP Range (one range, RFC 9110), straight from storage.

Bodies are generators over storage chunks (<= 1 MiB), so a multi-gigabyte merged model is
never held in memory; a Range request gets exactly the asked bytes (206), an impossible one
416 with `Content-Range: bytes */size`, and a malformed Range header is ignored (200).

Positions are parsed with a bound on their digits (`MAX_POSITION_DIGITS`), not by `int()` on
whatever arrived: `bytes=<4301 digits>-` made int() raise (Python's limit on digits) and was a
500. A syntactically valid position too long to be a byte offset of any object here is read
as "past the end", which is what RFC 9110 makes of a large number: a first-pos past the end
is unsatisfiable (416, section 15.5.17), a last-pos past the end means the end (14.1.2), and
a suffix longer than the object is the whole object (14.1.3). Ignoring such a header (200)
would also be allowed, but 416 tells the client its range is wrong rather than sending
everything it did not ask for.

What a download holds while it streams (issue [reliability-3]): no database connection and no
transaction (the routes read their rows before they return, and the request's session is closed
before the response is sent, api/deps.py); one of its tenant's download slots in this process
(`max_downloads_per_tenant`, a 429 past it, api/deps.py `download_slot`); and, while the client
is slow, one storage chunk. A client that takes none of the next `SEND_PIECE` bytes within
`stream_send_timeout_seconds` is cut: `StalledClientError` ends the response and the server closes
the connection, which is how HTTP/1.1 says a body was cut short. Logged at info, once, by us;
uvicorn's own error record of it (an exception after the response started) is dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from urllib.parse import quote

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from api.errors import ApiError
from api.schemas.errors import error_responses

log = logging.getLogger("api.downloads")

# a download is sent in pieces of this size, each of which the client must take within the send timeout
SEND_PIECE = 64 * 1024
RETRY_AFTER_SECONDS = 5
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
# more digits than any byte offset has (2**63 has 19); a longer position is "past any end"
MAX_POSITION_DIGITS = 19
_PAST_ANY_END = 10**MAX_POSITION_DIGITS


def _position(digits: str) -> int:
    """The value of a run of ASCII digits, or `_PAST_ANY_END` when it has too many to be an offset."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= MAX_POSITION_DIGITS else _PAST_ANY_END


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, stop) for a single `bytes=` range; None to send everything."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # other units, several ranges, garbage: ignore the header
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        length = _position(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size
    start = _position(first)
    end = _position(last) if last else None
    if start >= size or (end is not None and end < start):
        raise _unsatisfiable(size)
    return start, size if end is None else min(end + 1, size)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, f"Requested range not satisfiable (size is {size} bytes)", param="Range",
                    code="range_not_satisfiable", headers={"Content-Range": f"bytes */{size}"})


# `responses=` of a download route, besides download_responses()
DOWNLOAD_ERRORS = error_responses(429, d429="The tenant already has DORA_MAX_DOWNLOADS_PER_TENANT downloads streaming "
                                            "from this server (type `requests`, code `rate_limit_exceeded`, "
                                            "Retry-After) or is over its request rate")


def too_many_downloads(limit: int) -> ApiError:
    return ApiError(429, f"Too many downloads: this tenant already has {limit} streaming from this server, the "
                         "limit. Wait for one to finish, then try again.",
                    type="requests", code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class StalledClientError(Exception):
    """The client took nothing for the send timeout: the response is cut (the connection closed)."""

    def __init__(self, seconds: float, path: str) -> None:
        super().__init__(f"the client of {path} took nothing for {seconds:g} s: cut")


class _DropStalledClientErrors(logging.Filter):
    """uvicorn logs any exception raised after a response started at error level, with a traceback;
    a stalled client being cut is expected and already logged (info) where it happens."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, StalledClientError)


_quiet = _DropStalledClientErrors()


async def send_within(send: Send, message: Message, *, seconds: float | None, path: str) -> None:
    """`send(message)`, or StalledClientError when the client has not made room for it within `seconds`
    (the server's flow control holds the send while the client reads nothing)."""
    if seconds is None:
        await send(message)
        return
    with anyio.move_on_after(seconds) as waited:
        await send(message)
    if waited.cancelled_caught:
        log.info("cut a stalled client of %s: it took nothing for %g s (DORA_STREAM_SEND_TIMEOUT_SECONDS)",
                 path, seconds)
        logging.getLogger("uvicorn.error").addFilter(_quiet)  # a filter is added once however often this runs
        raise StalledClientError(seconds, path)


class DownloadResponse(StreamingResponse):
    """A StreamingResponse sent in pieces of `SEND_PIECE`, each within `send_timeout` seconds."""

    def __init__(self, content: Iterator[bytes], *, send_timeout: float | None, **kw) -> None:
        super().__init__(content, **kw)
        self.send_timeout, self.path = send_timeout, ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.path = scope.get("path", "")
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            for at in range(0, len(chunk), SEND_PIECE):
                await send_within(send, {"type": "http.response.body", "body": chunk[at:at + SEND_PIECE],
                                         "more_body": True}, seconds=self.send_timeout, path=self.path)
        await send_within(send, {"type": "http.response.body", "body": b"", "more_body": False},
                          seconds=self.send_timeout, path=self.path)


def stream_response(*, size: int, read: Callable[[int, int], Iterator[bytes]], range_header: str | None,
                    filename: str, media_type: str = "application/octet-stream",
                    etag: str | None = None, send_timeout: float | None = None) -> StreamingResponse:
    """200 with the whole object, or 206 with the one range asked for. `read` must need no
    database session: the request's is closed before the first byte is sent."""
    headers = {"Accept-Ranges": "bytes",
               "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"}
    if etag:
        headers["ETag"] = f'"{etag}"'
    byte_range = parse_range(range_header, size)
    start, stop, status = (0, size, 200) if byte_range is None else (*byte_range, 206)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    return DownloadResponse(read(start, stop), send_timeout=send_timeout, status_code=status, media_type=media_type,
                            headers=headers)
