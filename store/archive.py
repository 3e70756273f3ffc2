"""A whole artifact as one tar stream, built on the fly from storage, with a size known upfront.

Headers are deterministic (fixed mode, owner and mtime), so the byte count stored in the
artifact's `fine-tune-results` file row equals what the download sends: clients get a
Content-Length and a progress bar, and nothing is ever assembled in memory or on disk.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

from store.storage import Storage

BLOCK = tarfile.BLOCKSIZE  # 512


def _header(artifact: Any, entry: dict[str, Any]) -> bytes:
    info = tarfile.TarInfo(name=f"{artifact.name}/{entry['path']}")
    info.size, info.mode, info.mtime = int(entry["bytes"]), 0o644, int(artifact.created_at.timestamp())
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> int:
    return -size % BLOCK


def _segments(artifact: Any, storage: Storage | None):
    """(length, read(a, b)) pieces of the tar in order: header, file data, padding, ..., end blocks."""
    for entry in artifact.files:
        header, size = _header(artifact, entry), int(entry["bytes"])
        yield len(header), (lambda a, b, h=header: iter([h[a:b]]))
        key = f"{artifact.storage_prefix}/{entry['path']}"
        yield size, (lambda a, b, k=key: storage.open_range(k, a, b))
        yield _padding(size), (lambda a, b: iter([b"\0" * (b - a)]))
    yield 2 * BLOCK, (lambda a, b: iter([b"\0" * (b - a)]))


def tar_size(artifact: Any) -> int:
    """Exact byte count of `iter_tar(artifact, ...)`."""
    return sum(length for length, _ in _segments(artifact, None))


def iter_tar(artifact: Any, storage: Storage, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
    """Yield bytes [start, stop) of the tar of the artifact's files (`<name>/<path>`).

    Pieces before `start` are skipped without reading them, so resuming a large download
    (HTTP Range) costs only what is sent.
    """
    position = 0
    for length, read in _segments(artifact, storage):
        end = position + length
        if stop is not None and position >= stop:
            return
        if end > start and length:
            a, b = max(0, start - position), length if stop is None else min(length, stop - position)
            for chunk in read(a, b):
                if chunk:
                    yield chunk
        position = end
