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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from urllib.parse import quote

from fastapi.responses import StreamingResponse

from api.errors import ApiError

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


def stream_response(*, size: int, read: Callable[[int, int], Iterator[bytes]], range_header: str | None,
                    filename: str, media_type: str = "application/octet-stream",
                    etag: str | None = None) -> StreamingResponse:
    """200 with the whole object, or 206 with the one range asked for."""
    headers = {"Accept-Ranges": "bytes",
               "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"}
    if etag:
        headers["ETag"] = f'"{etag}"'
    byte_range = parse_range(range_header, size)
    start, stop, status = (0, size, 200) if byte_range is None else (*byte_range, 206)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    return StreamingResponse(read(start, stop), status_code=status, media_type=media_type, headers=headers)
