"""Read an offline W&B run back from its `.wandb` file, as `wandb sync` would.

The file is W&B's datastore: a 7-byte header (":W&B", magic, version), then a LevelDB-style log
of 32 KiB blocks whose chunks (crc32 4, length 2, type 1: full/first/middle/last) carry the
protobuf `Record`s of wandb's own `wandb_internal_pb2` (no Python reader ships with wandb-core).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HEADER, BLOCK, CHUNK_HEADER = 7, 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B datastore"
    out, offset, pending = [], HEADER, b""
    while offset + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < CHUNK_HEADER:  # the block's tail is padding
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + CHUNK_HEADER])
        chunk = data[offset + CHUNK_HEADER:offset + CHUNK_HEADER + length]
        offset += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def offline_run(path: Path) -> dict:
    """{"config": {key: value}, "history": [{"_step": n, name: value}], "tags": [...], "name", "project"};
    a logged Table is its reference ({"path": "media/table/...json", "nrows": n, ...}) under `files/`."""
    run: dict = {"config": {}, "history": [], "tags": [], "name": None, "project": None}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"], run["project"] = record.run.display_name, record.run.project
            run["tags"] = list(record.run.tags)
            run["config"] |= {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "config":
            run["config"] |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:  # a logged Table is nested: samples/{path, nrows, ...}
                *parents, key = list(item.nested_key) or [item.key]
                place = row
                for parent in parents:
                    place = place.setdefault(parent, {})
                place[key] = json.loads(item.value_json)
            run["history"].append(row)
    return run
