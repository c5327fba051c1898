"""The sample index of a source folder: per-shard parts, their merge, chunked reads and random access to samples.

Index parts are merged by streaming into `index.parquet`, read back one row group at a time for planners, and a
sample is fetched from its index row by a tar byte range or a Parquet row group.

Source folder layout (`OUT/sources/<source>/`): `{shard:05d}.tar` or `.parquet`, `{shard:05d}_status.parquet`,
`{shard:05d}_stats.json`, `{shard:05d}_index.parquet`, and the merged `index.parquet`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import fs

SUFFIXES = {
    "webdataset": ".tar",
    "parquet": ".parquet",
    "status": "_status.parquet",
    "stats": "_stats.json",
    "index": "_index.parquet",
}
DATA_KINDS = ("webdataset", "parquet")
MERGED_INDEX = "index.parquet"
INDEX_ID_META = b"tinymix.index_id"
_SHARD_FILE = re.compile(r"^(\d{5,})(" + "|".join(re.escape(s) for s in SUFFIXES.values()) + r")$")
_KIND_OF_SUFFIX = {suffix: kind for kind, suffix in SUFFIXES.items()}

# Absent members and the location columns of the other format hold -1, so every integer column is non-null and
# converts to numpy without a mask.
TAR_MEMBERS = ("image", "json", "txt")
# The crc32 of each stored member's bytes (as `ShardReader.members` returns them), -1 when absent.
CHECKSUM_COLUMNS = tuple(f"{m}_crc32" for m in TAR_MEMBERS)
_LOCATION_COLUMNS = (
    *(f"{m}_{c}" for m in TAR_MEMBERS for c in ("offset", "size")),
    "row_group",
    "row_in_group",
    *CHECKSUM_COLUMNS,
)
# Set to 1 to make every `ShardReader` check the members it reads against their recorded crc32.
VERIFY_ENV = "TINYMIX_VERIFY"
INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("n_images", pa.int32(), nullable=False),
        pa.field("text_chars", pa.int32(), nullable=False),
        pa.field("image_ext", pa.string()),
        *(
            pa.field(c, pa.int64() if c.endswith(("_offset", "_size", "_crc32")) else pa.int32(), nullable=False)
            for c in _LOCATION_COLUMNS
        ),
    ]
)


def shard_name(shard: int, kind: str) -> str:
    """The file name of one of a shard's files; `kind` is a format (`webdataset`, `parquet`) or a side file."""
    if kind not in SUFFIXES:
        raise ValueError(f"unknown shard file kind {kind!r}; expected one of {sorted(SUFFIXES)}")
    return f"{shard:05d}{SUFFIXES[kind]}"


def shard_files(names: Sequence[str]) -> dict[str, set[int]]:
    """Shard numbers present per file kind among `names` (a folder listing); temp and other files are ignored."""
    found: dict[str, set[int]] = {kind: set() for kind in SUFFIXES}
    for name in names:
        m = _SHARD_FILE.match(name)
        if m:
            found[_KIND_OF_SUFFIX[m.group(2)]].add(int(m.group(1)))
    return found


def index_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Index rows as an `INDEX_SCHEMA` table; location columns a row does not carry are filled with -1."""
    filled = [{**dict.fromkeys(_LOCATION_COLUMNS, -1), **r} for r in rows]
    return pa.Table.from_pylist(filled, schema=INDEX_SCHEMA)


def _read_part(url: str) -> pa.Table:
    fsys, path = fs.resolve(url)
    with fsys.open(path, "rb") as f:
        table = pq.read_table(f)
    if not table.schema.equals(INDEX_SCHEMA, check_metadata=False):
        raise ValueError(f"{url}: index part schema differs from INDEX_SCHEMA:\n{table.schema}")
    return table


def merge_index(out_dir: str, shards: Sequence[int] | None = None, index_id: str | None = None) -> str:
    """Concatenate the `{shard}_index.parquet` parts of a source folder, in shard order, into `index.parquet`.

    `shards`: the parts to merge (default: every part in the folder). Streams one part at a time through one
    ParquetWriter, one row group per part (empty parts give an empty row group), so memory is one shard's index;
    no shard at all gives an empty index. Every part must belong to a complete shard (status file present).
    `index_id` (what the index was made from, see `index_id`) goes into the file's metadata. Returns the URL of the
    merged index, published atomically.
    """
    found = shard_files(fs.list_names(out_dir))
    parts = sorted(found["index"]) if shards is None else sorted(shards)
    incomplete = [s for s in parts if s not in found["status"] or s not in found["index"]]
    if incomplete:
        raise ValueError(
            f"{out_dir}: shards {incomplete} have no index part or no status file (interrupted); rerun the build"
        )
    schema = INDEX_SCHEMA if index_id is None else INDEX_SCHEMA.with_metadata({INDEX_ID_META: index_id.encode()})
    tmp = tempfile.mkdtemp(prefix="tinymix-index-")
    try:
        local = os.path.join(tmp, MERGED_INDEX)
        with pq.ParquetWriter(local, schema) as writer:
            for shard in parts:
                table = _read_part(fs.join(out_dir, shard_name(shard, "index")))
                writer.write_table(
                    table.replace_schema_metadata(schema.metadata), row_group_size=max(1, table.num_rows)
                )
        final = fs.join(out_dir, MERGED_INDEX)
        fs.makedirs(out_dir)  # a source with no rows has no shards, hence no folder yet
        fs.publish(local, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def index_id(index_url: str) -> str | None:
    """The identity a merged index was written with (a hash of its shards' fingerprints), or None if it has none.

    Whatever is derived from an index (the length index) is stale when this changes.
    """
    fsys, path = fs.resolve(index_url)
    with fsys.open(path, "rb") as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    value = meta.get(INDEX_ID_META)
    return value.decode() if value else None


def iter_index(index_url: str, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """The merged index one row group (one shard) at a time, for planners that must not load it whole."""
    fsys, path = fs.resolve(index_url)
    with fsys.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=list(columns) if columns is not None else None)


class ShardReader:
    """Random access to the samples of one source folder, given their index rows.

    Tar samples are one ranged read covering the sample's members (`pread` on local files, a ranged GET on object
    stores); Parquet samples read their row group (the last few are cached). Open handles are per process, so a
    reader may be created before DataLoader workers fork.
    """

    def __init__(self, out_dir: str, cached_row_groups: int = 2, verify: bool | None = None):
        self.out_dir = out_dir
        self.verify = os.environ.get(VERIFY_ENV) == "1" if verify is None else verify
        self._local = fs.is_local(out_dir)
        self._cached_row_groups = cached_row_groups
        self._pid = os.getpid()
        self._fds: dict[int, int] = {}
        self._parquet: dict[int, pq.ParquetFile] = {}
        self._handles: list[Any] = []
        self._groups: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()

    def members(self, index_row: Mapping[str, Any]) -> dict[str, Any]:
        """The stored sample in WebDataset form: `{"__key__": key, ext: bytes, ...}` (e.g. `jpg`, `json`, `txt`).

        The bytes are identical to the tar members (or the Parquet cells, encoded the same way).
        """
        self._check_pid()
        if index_row["row_group"] >= 0:
            members = self._parquet_members(index_row)
        else:
            members = self._tar_members(index_row)
        if self.verify:
            check_members(index_row, members, self.out_dir)
        return members

    def read(self, index_row: Mapping[str, Any]) -> dict[str, Any]:
        """The stored sample decoded: `key`, `record` (dict), `image` (bytes or None), `image_ext`, `caption`."""
        m = self.members(index_row)
        ext = index_row["image_ext"]
        return {
            "key": m["__key__"],
            "record": json.loads(m["json"]),
            "image": m.get(ext) if ext else None,
            "image_ext": ext,
            "caption": m["txt"].decode("utf-8") if "txt" in m else None,
        }

    def _tar_members(self, r: Mapping[str, Any]) -> dict[str, Any]:
        spans = {m: (r[f"{m}_offset"], r[f"{m}_size"]) for m in TAR_MEMBERS if r[f"{m}_offset"] >= 0}
        start = min(off for off, _ in spans.values())
        end = max(off + size for off, size in spans.values())
        blob = self._read_tar(int(r["shard"]), start, end - start)
        out: dict[str, Any] = {"__key__": r["key"]}
        for member, (off, size) in spans.items():
            out[r["image_ext"] if member == "image" else member] = blob[off - start : off - start + size]
        return out

    def _read_tar(self, shard: int, start: int, size: int) -> bytes:
        url = fs.join(self.out_dir, shard_name(shard, "webdataset"))
        if not self._local:
            return fs.read_range(url, start, size)
        if shard not in self._fds:
            self._fds[shard] = os.open(fs.resolve(url)[1], os.O_RDONLY)
        data = os.pread(self._fds[shard], size, start)
        if len(data) != size:
            raise ValueError(f"{url}: wanted {size} bytes at offset {start}, got {len(data)} (stale index?)")
        return data

    def _parquet_members(self, r: Mapping[str, Any]) -> dict[str, Any]:
        shard, group = int(r["shard"]), int(r["row_group"])
        table = self._group(shard, group)
        row = table.slice(int(r["row_in_group"]), 1).to_pylist()
        if not row or row[0]["key"] != r["key"]:
            raise ValueError(
                f"{self.out_dir}: shard {shard} row group {group} row {r['row_in_group']} does not hold key "
                f"{r['key']} (stale index?)"
            )
        cell = row[0]
        out: dict[str, Any] = {"__key__": cell["key"], "json": cell["json"].encode("utf-8")}
        if cell["image"] is not None:
            out[cell["image_ext"]] = cell["image"]
        if cell["caption"] is not None:
            out["txt"] = cell["caption"].encode("utf-8")
        return out

    def _group(self, shard: int, group: int) -> pa.Table:
        if (shard, group) in self._groups:
            self._groups.move_to_end((shard, group))
            return self._groups[(shard, group)]
        if shard not in self._parquet:
            fsys, path = fs.resolve(fs.join(self.out_dir, shard_name(shard, "parquet")))
            if not self._local:
                path = fsys.open(path, "rb")
                self._handles.append(path)
            self._parquet[shard] = pq.ParquetFile(path)
        table = self._parquet[shard].read_row_group(group)
        self._groups[(shard, group)] = table
        while len(self._groups) > self._cached_row_groups:
            self._groups.popitem(last=False)
        return table

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self.close()
            self._pid = os.getpid()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        for pf in self._parquet.values():
            pf.close()
        for handle in self._handles:
            handle.close()
        self._fds, self._parquet, self._handles, self._groups = {}, {}, [], OrderedDict()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChecksumMismatch(ValueError):
    """A stored member's bytes differ from the crc32 its index row recorded."""


def check_members(index_row: Mapping[str, Any], members: Mapping[str, Any], where: str) -> None:
    """Raise `ChecksumMismatch` if a member read for `index_row` has another crc32 than the row recorded.

    Members the row has no checksum for (column absent, e.g. not read by the caller, or -1) are not checked.
    """
    for member in TAR_MEMBERS:
        want = index_row.get(f"{member}_crc32", -1)
        if want is None or want < 0:
            continue
        ext = index_row["image_ext"] if member == "image" else member
        data = members.get(ext)
        if data is None:
            continue  # a partial read (e.g. the image alone) does not hold this member
        got = zlib.crc32(data)
        if got != want:
            raise ChecksumMismatch(
                f"{where}: shard {int(index_row['shard'])} key {index_row['key']}: {member} crc32 {got:08x}, "
                f"index recorded {int(want):08x}"
            )


def read_sample(out_dir: str, index_row: Mapping[str, Any]) -> dict[str, Any]:
    """One sample by its index row (opens and closes a `ShardReader`; keep a reader for many reads)."""
    with ShardReader(out_dir) as reader:
        return reader.read(index_row)
