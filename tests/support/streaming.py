"""Download a URL chunk by chunk while measuring Python's peak allocation (bounded-memory checks)."""

from __future__ import annotations

import hashlib
import tracemalloc

import httpx


def stream_download(url: str, headers: dict) -> tuple[int, str, int]:
    """(bytes received, sha256 hex digest, peak traced allocation in bytes) of a streamed GET."""
    received, digest = 0, hashlib.sha256()
    tracemalloc.start()
    try:
        with httpx.stream("GET", url, headers=headers, timeout=60) as response:
            assert response.status_code == 200, response.status_code
            for chunk in response.iter_bytes():
                received += len(chunk)
                digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return received, digest.hexdigest(), peak
