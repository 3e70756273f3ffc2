"""Streaming multipart upload with the size limit enforced WHILE the body arrives.

Starlette's `request.form()` spools a whole file before the route runs, so a limit checked
afterwards has already cost the disk and the time. Here the body is parsed as it streams:
the file part goes straight to a temp file (hashing as it goes) and the request is answered
413 the moment the file passes the limit (or before reading, when Content-Length says so).
The caller may lower the limit for one upload and say what passing it means (the route lowers
it to what is left of the tenant's storage quota, and passing that is a 429, api/quotas.py).
A client that disconnects mid-upload ends it with Starlette's `ClientDisconnect`: the staged
part is removed, and api/errors.py logs it at info and counts it as 499, not as a server error.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError, bad_request

FIELD_LIMIT = 64 * 1024  # all text fields together
ENVELOPE = 64 * 1024  # multipart headers and boundaries allowed on top of the file
FLUSH_AT = 1024 * 1024


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    sha256: str = ""

    def cleanup(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"File is too large: the limit on this server is {max_bytes} bytes", param="file",
                    code="file_too_large")


def safe_filename(raw: str) -> str:
    """The last path component, printable, at most 255 characters; never used as a path."""
    name = re.split(r"[\\/]", raw)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:255] or "upload.jsonl"


class _Receiver:
    """python-multipart callbacks: text fields kept in memory, the one file part to `out`."""

    def __init__(self, out, max_bytes: int, over_limit: Callable[[], ApiError]) -> None:
        self.out, self.max_bytes, self.over_limit = out, max_bytes, over_limit
        self.upload = Upload()
        self.digest = hashlib.sha256()
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.field_bytes = 0
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._text = bytearray()

    def on_part_begin(self) -> None:
        self._disposition, self._name, self._is_file, self._text = b"", None, False, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise bad_request("Malformed multipart body: a part has no name", param="file")
        self._name = options[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if self._is_file:
            if self._name != "file":
                raise bad_request(f"Unexpected file part '{self._name}': send the dataset as 'file'", param="file")
            if self.upload.filename is not None:
                raise bad_request("Only one file may be uploaded per request", param="file")
            self.upload.filename = safe_filename(options[b"filename"].decode("utf-8", "replace"))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            self.field_bytes += len(chunk)
            if self.field_bytes > FIELD_LIMIT:
                raise bad_request("Form fields are too large", param=self._name)
            self._text += chunk
            return
        self.upload.size += len(chunk)
        if self.upload.size > self.max_bytes:
            raise self.over_limit()
        self.pending.append(chunk)
        self.pending_size += len(chunk)

    def on_part_end(self) -> None:
        if not self._is_file and self._name is not None:
            self.upload.fields[self._name] = self._text.decode("utf-8", "replace")

    def flush(self) -> None:
        for chunk in self.pending:
            self.digest.update(chunk)
            self.out.write(chunk)
        self.pending, self.pending_size = [], 0

    def callbacks(self) -> dict:
        names = ("on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
                 "on_header_end", "on_headers_finished")
        return {name: getattr(self, name) for name in names}


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise ApiError(415, "Uploads must be multipart/form-data with a 'file' part and a 'purpose' field",
                       param="file", code="unsupported_media_type")
    if not options.get(b"boundary"):
        raise bad_request("Malformed multipart body: the Content-Type has no boundary", param="file")
    return options[b"boundary"]


def _check_declared_length(request: Request, max_bytes: int, over_limit: Callable[[], ApiError]) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + ENVELOPE:
        raise over_limit()


async def receive_upload(request: Request, *, max_bytes: int, tmp_dir: str | None = None,
                         over_limit: Callable[[], ApiError] | None = None) -> Upload:
    """Parse the multipart body into fields and one file on disk; the caller must `cleanup()`.

    A file of more than `max_bytes` raises `over_limit()` (default: the 413 `too_large`) as
    soon as its first byte past the limit arrives, or before reading when Content-Length says
    so; nothing of it is left on disk."""
    over_limit = over_limit or (lambda: too_large(max_bytes))
    boundary = _boundary(request)
    _check_declared_length(request, max_bytes, over_limit)
    fd, name = tempfile.mkstemp(prefix="dora-upload-", suffix=".part", dir=tmp_dir)
    receiver = None
    try:
        with os.fdopen(fd, "wb") as out:
            receiver = _Receiver(out, max_bytes, over_limit)
            receiver.upload.path = Path(name)
            parser = MultipartParser(boundary, receiver.callbacks())
            async for chunk in request.stream():
                _feed(parser, chunk)
                if receiver.pending_size >= FLUSH_AT:
                    await run_in_threadpool(receiver.flush)
            _finalize(parser)
            await run_in_threadpool(receiver.flush)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    upload = receiver.upload
    upload.sha256 = receiver.digest.hexdigest()
    if upload.filename is None:
        upload.cleanup()
        raise bad_request("Missing required parameter: 'file' (the dataset, as a multipart file part)",
                          param="file", code="missing_required_parameter")
    return upload


def _feed(parser: MultipartParser, chunk: bytes) -> None:
    try:
        parser.write(chunk)
    except ApiError:
        raise
    except Exception as error:  # python-multipart's parse errors
        raise bad_request(f"Malformed multipart body: {error}", param="file") from error


def _finalize(parser: MultipartParser) -> None:
    try:
        parser.finalize()
    except Exception as error:
        raise bad_request(f"Malformed multipart body: {error}", param="file") from error
