"""What a rerun may reuse: each shard's record of what made it, checked against what is on disk and what is wanted.

A shard records in its stats (`made_from`, `fingerprint`) the source's reader settings, the shard options that shape
its bytes, and the rows it covers with a hash of their content. A rerun reuses a shard only when that record equals
the one it would write now and its files have the sizes and row counts the stats recorded; anything else is rebuilt,
with the reason said (`changed: shards.image.size 96 -> 128`, `damaged: 00003.tar is 1024 bytes, recorded 8192`).

The rows hash stands for "the source's input files": it is the hash of the parsed rows the shard is cut from, so an
edited or appended input file rebuilds exactly the shards whose rows changed (a `touch` rebuilds nothing).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from shards import fs
from shards.index import DATA_KINDS, SUFFIXES, shard_files, shard_name
from shards.options import ShardOptions
from shards.readers import SourceSpec
from shards.record import BadRow, Record
from shards.writer import fingerprint

# Bumped when the shard layout changes, so shards of another layout are rebuilt rather than mixed in.
SHARD_LAYOUT = 1
# Download settings that change how fast images come, not which bytes are stored: never a reason to rebuild.
SPEED_ONLY = ("connect_timeout", "read_timeout", "retries", "backoff", "threads", "per_host", "user_agent_token")
_READ_THREADS = 16


def content_options(opts: ShardOptions) -> dict[str, Any]:
    """The shard options that shape a shard's bytes (everything but the download's speed settings)."""
    d = opts.model_dump(mode="json")
    d["download"] = {k: v for k, v in d["download"].items() if k not in SPEED_ONLY}
    return d


def source_made_from(spec: SourceSpec, opts: ShardOptions) -> dict[str, Any]:
    """The part of every shard's record that the source and shard options give (the rows are added per shard)."""
    return {
        "layout": SHARD_LAYOUT,
        "source": {
            "kind": spec.kind,
            "task": spec.task,
            "image_root": spec.image_root,
            "options": spec.options.model_dump(mode="json"),
        },
        "shards": content_options(opts),
    }


def rows_digest(items: Sequence[Record | BadRow]) -> str:
    """A hash of a shard's input rows as the reader gave them.

    A record's `file` is left out (a moved input file gives the same samples), a bad row keeps it (its message,
    stored in the status table, names the file). Pickle is a fast canonical-enough encoding here: the same rows
    under the same Python give the same bytes, and a change merely rebuilds.
    """
    h = hashlib.sha256()
    for item in items:
        fields = vars(item)
        if isinstance(item, Record):
            fields = {k: v for k, v in fields.items() if k != "file"}
        h.update(pickle.dumps((type(item).__name__, fields), protocol=5))
    return h.hexdigest()


def shard_made_from(source_part: dict[str, Any], items: Sequence[Record | BadRow]) -> dict[str, Any]:
    """A shard's whole record: the source part plus the rows it covers (first, last, count, content hash)."""
    rows = {"first": items[0].row, "last": items[-1].row, "count": len(items), "sha256": rows_digest(items)}
    return {**source_part, "rows": rows}


@dataclass
class OnDisk:
    """A shard found in a source folder: its stats when complete, and what is wrong with it (None: intact)."""

    shard: int
    stats: dict[str, Any] | None
    damage: str | None


def scan_source(out_dir: str) -> dict[int, OnDisk]:
    """Every shard with any file in `out_dir`, checked against its stats.

    Intact means: status present, stats readable, file sizes (and, on a local disk, the Parquet files' row counts)
    equal to what the stats recorded. One listing, then each shard's stats (and footers), read in parallel.
    """
    sizes = fs.list_sizes(out_dir)
    found = shard_files(sorted(sizes))
    shards = sorted(set().union(*found.values()))
    # Row counts cost two ranged reads per shard on an object store, where a rerun of 100k shards would pay them all:
    # there the listed sizes stand alone (a truncated or grown file changes size; `mixer verify` reads everything).
    count_rows = fs.is_local(out_dir)
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        checked = pool.map(lambda s: _check(out_dir, s, sizes, found, count_rows), shards)
        return dict(zip(shards, checked, strict=True))


def _check(out_dir: str, shard: int, sizes: dict[str, int], found: dict[str, set[int]], count_rows: bool) -> OnDisk:
    if shard not in found["status"]:
        return OnDisk(shard, None, "incomplete (no status file)")
    try:
        stats = json.loads(fs.read_bytes(fs.join(out_dir, shard_name(shard, "stats"))))
    except (OSError, ValueError) as e:
        return OnDisk(shard, None, f"stats unreadable ({type(e).__name__})")
    recorded = stats.get("files")
    fmt = stats.get("format")
    if not isinstance(recorded, dict) or fmt not in DATA_KINDS:
        return OnDisk(shard, stats, "no file sizes recorded (built by an older tinymix)")
    for kind, name in ((fmt, "data"), ("index", "index"), ("status", "status")):
        file = shard_name(shard, kind)
        if file not in sizes:
            return OnDisk(shard, stats, f"{file} missing")
        if sizes[file] != recorded.get(name):
            return OnDisk(shard, stats, f"{file} is {sizes[file]} bytes, recorded {recorded.get(name)}")
    for kind, want in (("index", stats.get("stored")), ("status", stats.get("input_rows"))) if count_rows else ():
        file = shard_name(shard, kind)
        try:
            rows = _parquet_rows(fs.join(out_dir, file))
        except (OSError, ValueError) as e:
            return OnDisk(shard, stats, f"{file} unreadable ({type(e).__name__})")
        if rows != want:
            return OnDisk(shard, stats, f"{file} has {rows} rows, recorded {want}")
    return OnDisk(shard, stats, None)


def _parquet_rows(url: str) -> int:
    fsys, path = fs.resolve(url)
    with fsys.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def why_rebuild(on_disk: OnDisk | None, made_from: dict[str, Any]) -> str | None:
    """None when the shard on disk may be reused for `made_from`; else why it must be (re)built (`new` if absent)."""
    if on_disk is None:
        return "new"
    if on_disk.damage is not None:
        return f"damaged: {on_disk.damage}"
    assert on_disk.stats is not None
    old = on_disk.stats.get("made_from")
    if old is None or on_disk.stats.get("fingerprint") != fingerprint(old):
        return "changed: no record of what made it"
    if fingerprint(old) == fingerprint(made_from):
        return None
    return "changed: " + describe_change(old, made_from)


def describe_change(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """The differing fields of two records, e.g. `shards.image.size 96 -> 128, rows`; rows are named, not shown."""
    diffs = _diff(old, new, "")
    shown = [d for d in diffs if not d.startswith("rows.")]
    if any(d.startswith("rows.") for d in diffs):
        shown.append("input rows")
    return ", ".join(shown[:limit]) + (f" (+{len(shown) - limit} more)" if len(shown) > limit else "")


def _diff(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if old == new else [f"{path} {json.dumps(old)} -> {json.dumps(new)}"]


def remove_shard(out_dir: str, shard: int) -> None:
    """Delete every file of a shard, its status (the completeness marker) first."""
    for kind in ("status", *(k for k in SUFFIXES if k != "status")):
        fs.remove(fs.join(out_dir, shard_name(shard, kind)))
