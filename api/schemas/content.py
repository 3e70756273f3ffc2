"""How the download routes are documented: bytes (or a tar), whole (200) or one range (206).

The routes answer with api/downloads.py's StreamingResponse; the response classes here only
tell the OpenAPI document the media type, in place of FastAPI's default `application/json`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response

from api.schemas.errors import error_responses

OCTET_STREAM = "application/octet-stream"
TAR = "application/x-tar"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_HEADERS = {
    "Accept-Ranges": {"description": "Always `bytes`: a Range request is honoured", "schema": {"type": "string"}},
    "Content-Length": {"description": "Bytes in this response", "schema": {"type": "integer"}},
    "Content-Disposition": {"description": "attachment, with the file name", "schema": {"type": "string"}},
    "ETag": {"description": "The content's sha256, quoted", "schema": {"type": "string"}},
}
_CONTENT_RANGE = {"Content-Range": {"description": "bytes first-last/size", "schema": {"type": "string"}}}


class OctetStreamResponse(Response):
    media_type = OCTET_STREAM


class TarResponse(Response):
    media_type = TAR


def download_responses(*media_types: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a download of one of `media_types`: 200 whole, 206 one range, 416."""
    content = {media_type: _BINARY for media_type in media_types}
    return {
        200: {"description": "The whole content", "content": content, "headers": _HEADERS},
        206: {"description": "The one range asked for with `Range: bytes=first-last`", "content": content,
              "headers": _HEADERS | _CONTENT_RANGE},
    } | error_responses(416)
