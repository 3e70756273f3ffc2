"""Moving files between artifact storage and a local folder: the worker's job inputs, checkpoints and
outputs, and the adapters an inference server (`dora serve`) caches.

Downloads land under a temporary name and are renamed when complete, so a folder or file
that exists locally is whole. Uploads go file by file (each object write is atomic in storage)
and return the file list an artifact or checkpoint row records.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from store.storage import Storage

CHUNK = 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(storage: Storage, key: str, target: Path) -> Path:
    """`key` to `target` (kept if already there: a local file is whole, see above)."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        storage.download(key, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def upload_folder(storage: Storage, folder: Path, prefix: str) -> list[dict]:
    """Every file under `folder` to `prefix/<relative path>`; returns [{"path", "bytes", "sha256"}]."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        size = storage.put_file(f"{prefix}/{relative}", path)
        files.append({"path": relative, "bytes": size, "sha256": sha256_of(path)})
    return files


def download_folder(storage: Storage, prefix: str, target: Path) -> Path:
    """Every object under `prefix` into `target` (replaced only once the whole folder arrived)."""
    keys = storage.list(prefix)
    if not keys:
        raise FileNotFoundError(f"nothing stored under {prefix}")
    temp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        for key in keys:
            local = temp / key[len(prefix):].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            storage.download(key, local)
        if target.exists():
            shutil.rmtree(target)
        os.replace(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def download_named_files(storage: Storage, prefix: str, names: tuple[str, ...] | list[str], target: Path) -> Path:
    """Only `prefix/<name>` for each of `names` into the folder `target` (renamed into place once every
    file arrived; kept if already there). Other objects under the prefix (a checkpoint's optimizer
    state) are never read. A name missing in storage raises FileNotFoundError naming it."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        temp.mkdir()
        for name in names:
            key = f"{prefix.rstrip('/')}/{name}"
            try:
                storage.download(key, temp / name)
            except FileNotFoundError:
                raise FileNotFoundError(f"no {name} under {prefix} in storage") from None
        try:
            os.replace(temp, target)
        except OSError:  # another process completed the same folder first: theirs is whole too
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target
