"""Streaming downloads with HTTP Range (one range, RFC 9110), straight from storage.

Bodies are generators over storage chunks (<= 1 MiB), so a multi-gigabyte merged model is
never held in memory; a Range request gets exactly the asked bytes (206), an impossible one
416 with `Content-Range: bytes */size`, and a malformed Range header is ignored (200).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from urllib.parse import quote

from fastapi.responses import StreamingResponse

from api.errors import ApiError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
        length = int(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size
    start = int(first)
    stop = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(size)
    return start, stop


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
