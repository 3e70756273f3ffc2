"""Which adapter sits in which slot: an LRU over the slots of one base model, with refcounts.

`acquire(key, fetch_dir)` returns the slot holding adapter `key` (an opaque string, the server's
model id), loading it on first use: `fetch_dir()` gives a local PEFT folder (the server downloads
it from storage), which is prepared outside every lock and then copied into the slot between two
engine steps. Each acquire counts one user of the slot until `release(key)`; a slot in use is
never evicted, the least recently used idle one is, and `AllSlotsBusyError` says when none is idle.
Concurrent acquires of one key share one load; a failed load frees its slot and raises to them all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dora_core.serving.adapter_slots import BASE_SLOT, AdapterSlots


class AllSlotsBusyError(RuntimeError):
    """Every adapter slot is held by running requests; retry when one finishes."""


@dataclass
class _Entry:
    slot: int
    users: int = 0
    loaded: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class AdapterCache:
    """LRU of adapters in the slots 1..slots-1 of `slots` (slot 0 is the base model)."""

    def __init__(self, slots: AdapterSlots) -> None:
        self.slots = slots
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._free = list(range(slots.num_slots - 1, BASE_SLOT, -1))  # pop() gives the lowest slot

    def acquire(self, key: str, fetch_dir: Callable[[], Path]) -> int:
        """The slot of adapter `key`, loaded if needed; counts one user until release(key)."""
        with self._lock:
            entry = self._entries.get(key)
            loader = entry is None
            if loader:
                entry = _Entry(slot=self._take_slot(key))
                self._entries[key] = entry
            entry.users += 1
            self._entries.move_to_end(key)
        if loader:
            self._load(key, entry, fetch_dir)
        else:
            entry.loaded.wait()
        if entry.error is not None:
            self._drop_user(key, entry)
            raise entry.error
        return entry.slot

    def release(self, key: str) -> None:
        """One user of `key` is done (its request left the batch)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.users == 0:
                raise ValueError(f"release({key!r}) without a matching acquire")
            entry.users -= 1

    def slot_of(self, key: str) -> int | None:
        """The slot holding `key` now (loaded or loading), or None."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.slot

    def users(self, key: str) -> int:
        with self._lock:
            entry = self._entries.get(key)
            return 0 if entry is None else entry.users

    def _take_slot(self, key: str) -> int:
        """A free slot, else the least recently used idle one's (under _lock)."""
        if self._free:
            return self._free.pop()
        for victim, entry in self._entries.items():
            if entry.users == 0 and entry.loaded.is_set():
                del self._entries[victim]
                return entry.slot
        raise AllSlotsBusyError(f"all {self.slots.num_slots - 1} adapter slots are in use by running requests; "
                                f"adapter {key!r} cannot be loaded now")

    def _load(self, key: str, entry: _Entry, fetch_dir: Callable[[], Path]) -> None:
        try:
            prepared = self.slots.prepare(fetch_dir())
            self.slots.write(entry.slot, prepared)
        except BaseException as error:  # noqa: BLE001 - handed to every waiter and re-raised by acquire
            entry.error = error
        finally:
            entry.loaded.set()

    def _drop_user(self, key: str, entry: _Entry) -> None:
        """After a failed load: the last waiter out gives the slot back."""
        with self._lock:
            entry.users -= 1
            if entry.users == 0 and self._entries.get(key) is entry:
                del self._entries[key]
                self._free.append(entry.slot)
