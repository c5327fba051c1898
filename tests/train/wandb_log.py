"""The history rows of an offline W&B run file (`run-<id>.wandb`), decoded with wandb's own protobuf `Record`.

wandb 0.31 no longer ships a Python reader of the file (its Go core writes it), so only the framing is read here: the
file is a LevelDB-log (a 7-byte `:W&B` header, then 32 KiB blocks of chunks, each `crc32 u32, length u16, type u8`
with FULL=1, FIRST=2, MIDDLE=3, LAST=4), each record a serialised `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FILE_HEADER = 7
CHUNK_HEADER = 7


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file (header {data[:7]!r})"
    out, pending, pos = [], b"", FILE_HEADER
    while pos + CHUNK_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        body = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = body if kind in (1, 2) else pending + body
        if kind in (1, 4):
            out.append(pending)
            pending = b""
    return out


def history(path: Path) -> list[dict[str, Any]]:
    """Every `wandb.log` row of the run, in order, as {key: value} (wandb's `_step`, `_runtime`… included)."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for raw in records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            )
    return rows


def config(path: Path) -> dict[str, Any]:
    """The run's config as its `config` records set it (later records override earlier keys)."""
    from wandb.proto import wandb_internal_pb2 as pb

    found: dict[str, Any] = {}
    for raw in records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                found[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif rec.WhichOneof("record_type") == "run":
            for item in rec.run.config.update:
                found[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return found
