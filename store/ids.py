"""Public object ids shaped like OpenAI's (`file-...`, `ftjob-...`), sortable by creation time.

The body is a ULID-style string (48-bit milliseconds + 80 random bits, Crockford base32,
lower case) so ordering by id is ordering by creation: cursor pagination (`after=<id>`)
is then one indexed range query that stays correct when the cursor object is deleted.
Within one process ids are strictly increasing even inside the same millisecond.
"""

from __future__ import annotations

import os
import threading
import time

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32; ASCII order == numeric order

PREFIXES = {
    "file": "file-",
    "job": "ftjob-",
    "event": "ftevent-",
    "checkpoint": "ftckpt-",
    "sample": "ftsample-",
    "artifact": "ftart-",
    "tenant": "org-",
    "key": "key-",
    # webhooks (store/webhooks.py); an event's id is the `webhook-id` of its deliveries
    "webhook": "wh_",
    "webhook_event": "evt_",
    "webhook_delivery": "whdel_",
    "webhook_attempt": "whatt_",
    # evals (issue #24, OpenAI's prefixes)
    "eval": "eval_",
    "eval_run": "evalrun_",
    "eval_output_item": "outputitem_",
}

_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random part) of the last id made here


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(kind: str) -> str:
    """A new id for `kind` (a key of PREFIXES), e.g. `ftjob-01jb2k...` (26 characters body)."""
    global _last
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        last_ms, last_rand = _last
        if now_ms <= last_ms:  # same millisecond (or clock stepped back): stay monotonic
            now_ms, rand = last_ms, last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment
        _last = (now_ms, rand)
    return PREFIXES[kind] + _encode(now_ms, 10) + _encode(rand, 16)
