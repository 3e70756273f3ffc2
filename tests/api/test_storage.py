"""Local artifact storage: atomic writes, ranges, listing, and server-built keys only."""

from __future__ import annotations

import pytest

from store.storage import LocalStorage, file_key, job_key


def test_put_read_range_list_delete(tmp_path):
    storage = LocalStorage(tmp_path)
    key = job_key("org-1", "ftjob-1", "artifacts", "adapter", "adapter_model.safetensors")
    assert storage.put_stream(key, [b"abc", b"defgh"]) == 8
    assert b"".join(storage.open_range(key)) == b"abcdefgh"
    assert b"".join(storage.open_range(key, 2, 5)) == b"cde"
    assert storage.size(key) == 8 and storage.exists(key)
    assert storage.list(job_key("org-1", "ftjob-1")) == [key]
    assert not list(tmp_path.rglob(".tmp-*"))  # no temp file left behind
    storage.delete_prefix(job_key("org-1", "ftjob-1"))
    assert not storage.exists(key)


def test_a_failed_write_keeps_the_previous_object(tmp_path):
    storage = LocalStorage(tmp_path)
    key = file_key("org-1", "file-1")
    storage.put_stream(key, [b"old"])

    def broken():
        yield b"new-partial"
        raise OSError("disk full")

    with pytest.raises(OSError):
        storage.put_stream(key, broken())
    assert b"".join(storage.open_range(key)) == b"old"
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("part", ["..", "../x", "/etc", "a/../../b", ".tmp-x", "", "a b", "x\x00"])
def test_keys_reject_traversal_and_odd_names(tmp_path, part):
    with pytest.raises(ValueError):
        job_key("org-1", "ftjob-1", part)
