"""Adapters from the artifact storage into a local cache folder, on first use.

The API names an adapter by its `storage_prefix` (a job's adapter output, or a checkpoint's folder);
only `ADAPTER_FILES` are downloaded (a checkpoint's prefix also holds optimizer.pt and more, never
read here). The local folder's name is a hash of the prefix, chosen by the server (a prefix never
becomes a path), under `<DORA_MODEL_CACHE_DIR>/adapters/`; it is written as a temporary folder renamed
into place, so a folder that exists is whole. What is stored under a prefix never changes (a
checkpoint's row is written after its files), so a cached folder never goes stale.

It can go away, though: a deleted model's prefix is removed from storage (DELETE /v1/models/{id},
store/model_deletion.py) and the API no longer routes requests for it, so its slot is evicted as
the least recently used; its local copy is removed by `forget_deleted`, which the server runs
every `SWEEP_SECONDS` (serve/app.py): each folder's prefix is kept next to it (`<folder>.prefix`)
and a folder whose prefix no longer holds the adapter in storage is deleted (one HEAD per cached
adapter per sweep).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from pathlib import Path

from dora_contract.serving import ADAPTER_FILES, AdapterRef
from store.storage import Storage
from store.transfer import download_named_files

log = logging.getLogger(__name__)
SWEEP_SECONDS = 300.0  # how often a server looks for cached adapters deleted from storage
_PREFIX_SUFFIX = ".prefix"


class AdapterNotFoundError(LookupError):
    """The storage holds no adapter under the request's prefix."""


class AdapterFiles:
    """Where each adapter's PEFT folder lies locally, downloading it the first time."""

    def __init__(self, storage: Storage, cache_dir: Path) -> None:
        self.storage = storage
        self.cache_dir = Path(cache_dir)

    def folder_of(self, prefix: str) -> Path:
        digest = hashlib.sha256(prefix.strip("/").encode()).hexdigest()[:32]
        return self.cache_dir / digest

    def local_dir(self, adapter: AdapterRef) -> Path:
        """The adapter's local folder (downloaded now when missing); AdapterNotFoundError if storage lacks it."""
        folder = self.folder_of(adapter.storage_prefix)
        try:
            if not folder.is_dir():  # the prefix first: a sweep can always find a folder's prefix
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                folder.with_name(folder.name + _PREFIX_SUFFIX).write_text(adapter.storage_prefix)
            return download_named_files(self.storage, adapter.storage_prefix, ADAPTER_FILES, folder)
        except FileNotFoundError as error:
            raise AdapterNotFoundError(f"adapter {adapter.key!r}: {error}") from None
        except ValueError as error:  # a prefix local storage refuses (an escaping or malformed key)
            raise AdapterNotFoundError(f"adapter {adapter.key!r}: {error}") from None

    def forget_deleted(self) -> list[str]:
        """Delete the local copies of adapters whose prefix storage no longer holds; their prefixes."""
        forgotten = []
        for marker in sorted(self.cache_dir.glob(f"*{_PREFIX_SUFFIX}")):
            prefix = marker.read_text()
            if self.storage.exists(f"{prefix.rstrip('/')}/{ADAPTER_FILES[0]}"):
                continue
            shutil.rmtree(marker.with_suffix(""), ignore_errors=True)
            marker.unlink(missing_ok=True)
            forgotten.append(prefix)
        return forgotten


class DeletedAdapterSweep:
    """Runs `files.forget_deleted()` every `seconds` in a daemon thread until stop()."""

    def __init__(self, files: AdapterFiles, seconds: float = SWEEP_SECONDS) -> None:
        self.files, self.seconds = files, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-adapter-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                for prefix in self.files.forget_deleted():
                    log.info("removed the local copy of adapter %s: it was deleted from storage", prefix)
            except Exception as error:  # noqa: BLE001 - housekeeping: a storage outage is retried next sweep
                log.warning("could not check the cached adapters against storage: %s", error)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
