"""Adapters from the artifact storage into a local cache folder, on first use.

The API names an adapter by its `storage_prefix` (a job's adapter output, or a checkpoint's folder);
only `ADAPTER_FILES` are downloaded (a checkpoint's prefix also holds optimizer.pt and more, never
read here). The local folder's name is a hash of the prefix, chosen by the server (a prefix never
becomes a path), under `<DORA_MODEL_CACHE_DIR>/adapters/`; it is written as a temporary folder renamed
into place, so a folder that exists is whole. What is stored under a prefix never changes (a
checkpoint's row is written after its files), so a cached folder never goes stale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dora_contract.serving import ADAPTER_FILES, AdapterRef
from store.storage import Storage
from store.transfer import download_named_files


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
        try:
            return download_named_files(self.storage, adapter.storage_prefix, ADAPTER_FILES,
                                        self.folder_of(adapter.storage_prefix))
        except FileNotFoundError as error:
            raise AdapterNotFoundError(f"adapter {adapter.key!r}: {error}") from None
        except ValueError as error:  # a prefix local storage refuses (an escaping or malformed key)
            raise AdapterNotFoundError(f"adapter {adapter.key!r}: {error}") from None
