"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

Write to a temporary file in the same folder, fsync it, rename over the target (atomic on
POSIX within one filesystem), then fsync the folder so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `target` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
        fsync_directory(target.parent)
    finally:
        temp.unlink(missing_ok=True)


def write_atomically(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call write(temp_path), then move the result into place atomically."""
    with atomic_path(target) as temp:
        write(temp)


def write_json_atomically(target: str | os.PathLike, payload: object) -> None:
    write_atomically(target, lambda temp: temp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n"))
