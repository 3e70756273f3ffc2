"""Artifact storage behind one small interface: a local folder (default) or S3-compatible.

Keys are built by the server only (`file_key`, `job_key`), from ids and fixed names, never from
user input, and every part is checked, so no request can reach outside its tenant's prefix.
Local writes are atomic (temp file, fsync, rename): a reader sees the old object or the whole
new one, never half, even if the writer is killed; S3 gives the same per object (see S3Storage).
Both backends pass one contract test-suite (tests/api/test_storage.py, S3 against a moto server).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TMP = ".tmp-"


def _check_parts(parts: Iterable[str]) -> list[str]:
    checked = []
    for part in parts:
        for piece in str(part).split("/"):
            if not _PART.match(piece) or piece.startswith(_TMP) or ".." in piece:
                raise ValueError(f"invalid storage key part: {piece!r}")
            checked.append(piece)
    return checked


def file_key(tenant_id: str, file_id: str) -> str:
    """Where an uploaded file lives: `tenants/<tenant>/files/<file>`."""
    return "/".join(["tenants", *_check_parts([tenant_id]), "files", *_check_parts([file_id])])


def job_key(tenant_id: str, job_id: str, *parts: str) -> str:
    """Where a job's outputs live: `tenants/<tenant>/jobs/<job>/<parts...>`."""
    return "/".join(["tenants", *_check_parts([tenant_id]), "jobs", *_check_parts([job_id, *parts])])


class Storage(Protocol):
    def put_file(self, key: str, path: str | os.PathLike) -> int: ...
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int: ...
    def open_range(self, key: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]: ...
    def download(self, key: str, path: str | os.PathLike) -> None: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...


class LocalStorage:
    """Objects as files under `root`; keys map to relative paths."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / "/".join(_check_parts([key]))).resolve()
        if self.root not in path.parents:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def _write(self, key: str, write: Callable[[BinaryIO], int]) -> int:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f"{_TMP}{uuid.uuid4().hex}"
        try:
            with open(temp, "wb") as out:
                size = write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
        return size

    def put_file(self, key: str, path: str | os.PathLike) -> int:
        def write(out: BinaryIO) -> int:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, out, CHUNK)
            return out.tell()

        return self._write(key, write)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        def write(out: BinaryIO) -> int:
            for chunk in chunks:
                out.write(chunk)
            return out.tell()

        return self._write(key, write)

    def open_range(self, key: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, stop) in chunks of at most 1 MiB (never the whole object)."""
        with open(self.path(key), "rb") as source:
            source.seek(start)
            remaining = (stop if stop is not None else self.size(key)) - start
            while remaining > 0:
                chunk = source.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    def download(self, key: str, path: str | os.PathLike) -> None:
        shutil.copyfile(self.path(key), path)

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if base.is_file():
            return [prefix]
        found = (p for p in base.rglob("*") if p.is_file() and not p.name.startswith(_TMP))
        return sorted(p.relative_to(self.root).as_posix() for p in found)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


class S3Storage:
    """S3-compatible object storage (AWS S3, MinIO, ...) through boto3, the `s3` extra.

    Credentials and region come from boto3's usual chain (`AWS_ACCESS_KEY_ID`, ...,
    `AWS_DEFAULT_REGION`, instance roles); `DORA_S3_ENDPOINT_URL` points at a non-AWS endpoint.

    Atomicity, as far as S3 allows: an object is replaced in one step when its PUT (or its
    multipart upload) completes, so a reader sees the old object or the whole new one. A failed
    upload leaves the previous object (s3transfer aborts an unfinished multipart upload), and
    one `open_range` is one GET: it keeps reading the version it started with. There is no
    rename, so no temp objects either. Missing objects raise FileNotFoundError, as locally.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, *,
                 region: str | None = None) -> None:
        import boto3  # only when S3 is configured
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise ValueError("an S3 storage URL needs a bucket: s3://bucket[/prefix]")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        # one pooled connection per API thread-pool worker, so concurrent downloads do not queue
        config = Config(max_pool_connections=64, retries={"max_attempts": 5, "mode": "standard"})
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        # a streamed (unseekable) upload buffers whole parts: at most 4 x 8 MiB in memory
        self.transfer = TransferConfig(max_concurrency=4)
        self.transfer.max_in_memory_upload_chunks = 4

    def _key(self, key: str) -> str:
        key = "/".join(_check_parts([key]))
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _missing_is_not_found(self, key: str) -> Iterator[None]:
        from botocore.exceptions import ClientError

        try:
            yield
        except ClientError as error:
            if _error_code(error) in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"no storage object {key!r}") from error
            raise

    def put_file(self, key: str, path: str | os.PathLike) -> int:
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)
        return os.path.getsize(path)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        reader = _ChunkReader(iter(chunks))
        self.client.upload_fileobj(reader, self.bucket, self._key(key), Config=self.transfer)
        return reader.count

    def open_range(self, key: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, stop) in chunks of at most 1 MiB, from one GET."""
        from botocore.exceptions import ClientError

        if stop is not None and stop <= start:
            return
        extra = {}
        if start or stop is not None:  # `bytes=0-` on an empty object is a 416: ask for a range only when needed
            extra["Range"] = f"bytes={start}-" + ("" if stop is None else str(stop - 1))
        try:
            with self._missing_is_not_found(key):
                body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)["Body"]
        except ClientError as error:
            if _error_code(error) == "InvalidRange":  # start at or past the end: nothing, as locally
                return
            raise
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()  # also when the reader stops early: the connection goes back to the pool

    def download(self, key: str, path: str | os.PathLike) -> None:
        with self._missing_is_not_found(key):
            self.client.download_file(self.bucket, self._key(key), str(path), Config=self.transfer)

    def size(self, key: str) -> int:
        with self._missing_is_not_found(key):
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:  # other errors (credentials, network) are raised, not "missing"
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        """Keys equal to `prefix` or under `prefix/` (never a sibling such as `prefix0/...`)."""
        full, strip = self._key(prefix), len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
        keys = (item["Key"] for page in pages for item in page.get("Contents", []))
        return sorted(key[strip:] for key in keys if key == full or key.startswith(full + "/"))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for batch in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            objects = [{"Key": self._key(key)} for key in keys[batch:batch + 1000]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise OSError(f"could not delete {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}")


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


class _ChunkReader:
    """A read()-able view of an iterator of byte chunks (for boto3's upload_fileobj)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buffer, self.count = chunks, bytearray(), 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        size = len(self.buffer) if size < 0 else min(size, len(self.buffer))
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.count += len(out)
        return out


def open_storage(storage_url: str, *, endpoint_url: str | None = None, region: str | None = None) -> Storage:
    """`s3://bucket/prefix` -> S3Storage; a folder or `file:///path` -> LocalStorage."""
    if storage_url.startswith("s3://"):
        bucket, _, prefix = storage_url[len("s3://"):].partition("/")
        return S3Storage(bucket, prefix, endpoint_url=endpoint_url, region=region)
    if storage_url.startswith("file://"):
        storage_url = storage_url[len("file://"):]
    return LocalStorage(storage_url)
