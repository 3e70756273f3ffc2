"""Artifact storage: one contract, run on the local folder and on S3 (a moto server subprocess).

put/get/list/delete, ranged reads, large streams in bounded memory, and the atomicity each
backend gives: a failed write keeps the previous object, and a reader sees one whole version.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import pytest

from store.storage import CHUNK, LocalStorage, S3Storage, file_key, job_key, open_storage

MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "artifacts")
    url, endpoint = request.getfixturevalue("s3_url"), request.getfixturevalue("s3_endpoint")
    store = open_storage(url, endpoint_url=endpoint)
    assert isinstance(store, S3Storage)
    return store


def read(storage, key, start=0, stop=None) -> bytes:
    return b"".join(storage.open_range(key, start, stop))


def leftovers(storage) -> list:
    """Half-written state a failed write could leave: temp files, unfinished multipart uploads."""
    if isinstance(storage, LocalStorage):
        return list(storage.root.rglob(".tmp-*"))
    uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.prefix)
    return uploads.get("Uploads", [])


def test_put_read_range_list_delete(storage):
    key = job_key("org-1", "ftjob-1", "artifacts", "adapter", "adapter_model.safetensors")
    assert storage.put_stream(key, [b"abc", b"defgh"]) == 8
    assert read(storage, key) == b"abcdefgh"
    assert read(storage, key, 2, 5) == b"cde"
    assert read(storage, key, 5) == b"fgh"
    assert read(storage, key, 6, 100) == b"gh"  # a stop past the end is clamped
    assert read(storage, key, 3, 3) == b"" and read(storage, key, 8) == b"" and read(storage, key, 50) == b""
    assert storage.size(key) == 8 and storage.exists(key)
    assert storage.list(job_key("org-1", "ftjob-1")) == [key]
    assert storage.list(key) == [key]  # a key lists itself
    assert not leftovers(storage)
    storage.delete_prefix(job_key("org-1", "ftjob-1"))
    assert not storage.exists(key) and storage.list(job_key("org-1", "ftjob-1")) == []


def test_put_file_download_overwrite_and_delete(storage, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 5000)
    key = file_key("org-1", "file-1")
    assert storage.put_file(key, source) == 5000
    target = tmp_path / "copy.bin"
    storage.download(key, target)
    assert target.read_bytes() == b"x" * 5000
    assert storage.put_stream(key, iter([b"new"])) == 3  # an overwrite replaces the whole object
    assert read(storage, key) == b"new" and storage.size(key) == 3
    storage.delete(key)
    storage.delete(key)  # deleting what is gone is not an error
    assert not storage.exists(key)


def test_an_empty_object(storage):
    key = file_key("org-1", "file-empty")
    assert storage.put_stream(key, []) == 0
    assert storage.exists(key) and storage.size(key) == 0
    assert read(storage, key) == b""


def test_missing_objects_are_file_not_found(storage, tmp_path):
    key = file_key("org-1", "file-missing")
    assert not storage.exists(key)
    with pytest.raises(FileNotFoundError):
        storage.size(key)
    with pytest.raises(FileNotFoundError):
        read(storage, key)
    with pytest.raises(FileNotFoundError):
        storage.download(key, tmp_path / "nowhere")
    assert storage.list(job_key("org-1", "ftjob-none")) == []


def test_list_and_delete_prefix_stay_inside_the_prefix(storage):
    """`ftjob-1` is a string prefix of `ftjob-10`; listing and deleting must not cross that line."""
    mine = [job_key("org-1", "ftjob-1", "a", "x.bin"), job_key("org-1", "ftjob-1", "b.bin")]
    sibling = job_key("org-1", "ftjob-10", "a", "x.bin")
    for key in [*mine, sibling]:
        storage.put_stream(key, [key.encode()])
    assert storage.list(job_key("org-1", "ftjob-1")) == sorted(mine)
    assert storage.list("tenants/org-1") == sorted([*mine, sibling])
    storage.delete_prefix(job_key("org-1", "ftjob-1"))
    assert storage.list("tenants/org-1") == [sibling] and read(storage, sibling) == sibling.encode()


def test_a_failed_write_keeps_the_previous_object(storage):
    key = file_key("org-1", "file-1")
    storage.put_stream(key, [b"old"])

    def broken():
        yield b"new-partial"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage.put_stream(key, broken())
    assert read(storage, key) == b"old"
    assert not leftovers(storage)


def test_a_failed_large_write_keeps_the_previous_object(storage):
    """Past S3's multipart threshold (8 MiB) the upload is in parts; a failure must abort them all."""
    key = job_key("org-1", "ftjob-1", "merged", "model.safetensors")
    storage.put_stream(key, [b"old"])

    def broken():
        for _ in range(20):
            yield os.urandom(MIB)
        raise OSError("source vanished")

    with pytest.raises(OSError, match="source vanished"):
        storage.put_stream(key, broken())
    assert read(storage, key) == b"old"
    assert not leftovers(storage)


def test_a_reader_sees_one_whole_version_across_an_overwrite(storage):
    key = job_key("org-1", "ftjob-1", "adapter", "adapter_model.safetensors")
    old, new = b"a" * (3 * MIB), b"b" * (3 * MIB)
    storage.put_stream(key, [old])
    reader = storage.open_range(key)
    first = next(reader)  # the GET (or open) has happened
    storage.put_stream(key, [new])
    assert first + b"".join(reader) == old
    assert read(storage, key) == new


def test_large_objects_stream_in_bounded_chunks_and_memory(storage):
    """24 MiB written from a generator and read back (whole and across part boundaries) in <= 1 MiB
    chunks, while this process's allocations while reading stay far below the object's size."""
    size, block = 24 * MIB, os.urandom(MIB)
    key = job_key("org-1", "ftjob-1", "merged", "model.safetensors")
    assert storage.put_stream(key, (block for _ in range(size // MIB))) == size
    assert storage.size(key) == size
    digest, largest = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        for chunk in storage.open_range(key):
            digest.update(chunk)
            largest = max(largest, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == hashlib.sha256(block * (size // MIB)).hexdigest()
    assert largest <= CHUNK
    assert peak < 8 * MIB, f"peak allocation {peak / MIB:.1f} MiB while reading a {size // MIB} MiB object"
    boundary = 8 * MIB  # S3's part size: a range across a part boundary
    assert read(storage, key, boundary - 10, boundary + 10) == (block * 9)[boundary - 10:boundary + 10]
    assert read(storage, key, size - 5) == block[-5:]


def test_put_stream_accepts_any_chunk_sizes(storage):
    """Tiny and odd-sized chunks are reassembled exactly (S3 re-slices them into parts)."""
    pieces = [os.urandom(n) for n in (1, 0, 7, MIB + 3, 5, 2 * MIB - 1)]
    key = file_key("org-1", "file-odd")
    assert storage.put_stream(key, iter(pieces)) == sum(map(len, pieces))
    assert read(storage, key) == b"".join(pieces)


@pytest.mark.parametrize("part", ["..", "../x", "/etc", "a/../../b", ".tmp-x", "", "a b", "x\x00"])
def test_keys_reject_traversal_and_odd_names(part):
    with pytest.raises(ValueError):
        job_key("org-1", "ftjob-1", part)


@pytest.mark.parametrize("key", ["../outside", "tenants/../../etc/passwd", "/abs", "a//b"])
def test_backends_refuse_keys_not_built_by_the_server(storage, key):
    with pytest.raises(ValueError):
        storage.exists(key)


def test_open_storage_urls(tmp_path):
    assert isinstance(open_storage(str(tmp_path / "a")), LocalStorage)
    assert open_storage(f"file://{tmp_path / 'b'}").root == (tmp_path / "b").resolve()
    with pytest.raises(ValueError, match="bucket"):
        open_storage("s3://")
