"""The shard writer: one shard's samples to a deterministic tar or a Parquet file, plus index part, status and stats.

Everything is built in a local temp dir and published atomically, the status file last.

The status file is the completeness marker: a shard is complete when its status, data and index part files exist
(`complete_shards`); the build reuses it only when those files also have the sizes its stats recorded and it was
made from the same rows and options (`shards.resume`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import fs
from shards.index import SUFFIXES, index_table, shard_files, shard_name
from shards.status import StatusRow, shard_stats, status_table

IMAGE_EXTS = ("jpg", "png", "webp")
ROW_GROUP_SIZE = 256
_BLOCK = tarfile.BLOCKSIZE


@dataclass
class Sample:
    """One stored sample.

    `record` is `Record.to_json()` plus the image fields the builder adds (width, height, orig_width, orig_height,
    sha256, …), stored as given; `caption` becomes `KEY.txt` when not None.

    A multi-image sample has its second and later images in `extra_images` (same `image_ext`). One image is stored
    as `KEY.jpg`; N > 1 as `KEY.0.jpg … KEY.{N-1}.jpg` (WebDataset splits the key at the first dot, so the sample
    reads as `{"0.jpg": …, "1.jpg": …, "json": …}`); in Parquet, N > 1 go to the list column `images` and `image`
    is null.
    """

    key: str
    record: dict[str, Any]
    image: bytes | None = None
    image_ext: str | None = None
    caption: str | None = None
    extra_images: list[bytes] = field(default_factory=list)

    @property
    def images(self) -> list[bytes]:
        """Every image's bytes, in placeholder order."""
        return [] if self.image is None else [self.image, *self.extra_images]


def encode_json(obj: Any, where: str) -> bytes:
    """Canonical JSON bytes (sorted keys, fixed separators, UTF-8) so equal records give equal bytes."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: record is not JSON-serialisable: {e}") from e


class _TarSink:
    """Writes samples as USTAR members with fixed metadata, so the same samples give byte-identical tars."""

    def __init__(self, path: str, row_group_size: int):
        self._file = open(path, "wb")  # closed in close()
        self._offset = 0

    def add(self, sample: Sample, json_bytes: bytes) -> dict[str, int]:
        members = [("json", "json", json_bytes)]
        images = sample.images
        if len(images) == 1:
            members.append((sample.image_ext, "image", images[0]))
        else:  # `0.jpg` … sort before `json` and `txt`, so the images are one run of members
            members += [(f"{k}.{sample.image_ext}", "images", data) for k, data in enumerate(images)]
        if sample.caption is not None:
            members.append(("txt", "txt", sample.caption.encode("utf-8")))
        location: dict[str, int] = {}
        for ext, column, data in sorted(members, key=_member_order):
            start = self._offset
            data_offset = self._write_member(f"{sample.key}.{ext}", data)
            if column == "images":
                # Several images: the `image` span is their run of members, headers included (a tar of its own,
                # which `shards.index.ShardReader` opens with tarfile), from the first header to the last padding.
                location.setdefault("image_offset", start)
                location["image_size"] = self._offset - location["image_offset"]
                continue
            location[f"{column}_offset"] = data_offset
            location[f"{column}_size"] = len(data)
        return location

    def _write_member(self, name: str, data: bytes) -> int:
        """Write a regular file as `TarFile.addfile` does; return where its data starts in the tar.

        tarfile's own header, the data, NULs to a whole block; written here rather than through `addfile`, which
        copies the TarInfo and streams the bytes through a file object: a fifth of a sample's writing time
        (`tests/shards/test_writer.py` checks the bytes against addfile's).
        """
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
        header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
        padding = -len(data) % _BLOCK
        self._file.write(header)
        self._file.write(data)
        self._file.write(tarfile.NUL * padding)
        data_offset = self._offset + len(header)
        self._offset = data_offset + len(data) + padding
        return data_offset

    def close(self) -> None:
        """End the archive as `TarFile.close` does: two zero blocks, then zeros to a whole tar record."""
        end = 2 * _BLOCK
        end += -(self._offset + end) % tarfile.RECORDSIZE
        self._file.write(tarfile.NUL * end)
        self._file.close()


def _member_order(member: tuple[str, str, bytes]) -> tuple:
    """Members by extension, numbered images by number (`2.jpg` before `10.jpg`) ahead of `json` and `txt`."""
    head = member[0].split(".", 1)[0]
    return (0, int(head), member[0]) if head.isdigit() else (1, 0, member[0])


# Record fields copied into their own Parquet columns (the full record is always in `json`).
RECORD_COLUMNS = ("source", "task", "width", "height", "orig_width", "orig_height", "sha256")
PARQUET_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("image_ext", pa.string()),
        pa.field("images", pa.list_(pa.binary())),
        pa.field("json", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("source", pa.string()),
        pa.field("task", pa.string()),
        *(pa.field(c, pa.int32()) for c in ("width", "height", "orig_width", "orig_height")),
        pa.field("sha256", pa.string()),
    ]
)


class _ParquetSink:
    """Writes samples as Parquet rows in fixed-size row groups, so random access reads one group."""

    def __init__(self, path: str, row_group_size: int):
        self._writer = pq.ParquetWriter(path, PARQUET_SCHEMA)
        self._size = row_group_size
        self._buffer: list[dict[str, Any]] = []
        self._group = 0

    def add(self, sample: Sample, json_bytes: bytes) -> dict[str, int]:
        location = {"row_group": self._group, "row_in_group": len(self._buffer)}
        columns = {c: sample.record.get(c) for c in RECORD_COLUMNS}
        self._buffer.append(
            {
                "key": sample.key,
                "image": sample.image if not sample.extra_images else None,
                "image_ext": sample.image_ext,
                "images": sample.images if sample.extra_images else None,
                "json": json_bytes.decode("utf-8"),
                "caption": sample.caption,
                **columns,
            }
        )
        if len(self._buffer) == self._size:
            self._flush()
        return location

    def _flush(self) -> None:
        if not self._buffer:
            return
        try:
            table = pa.Table.from_pylist(self._buffer, schema=PARQUET_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            keys = f"{self._buffer[0]['key']}..{self._buffer[-1]['key']}"
            raise ValueError(
                f"samples {keys}: a record field does not fit its Parquet column {RECORD_COLUMNS}: {e}"
            ) from e
        self._writer.write_table(table, len(table))
        self._buffer, self._group = [], self._group + 1

    def close(self) -> None:
        self._flush()
        self._writer.close()


SINKS = {"webdataset": _TarSink, "parquet": _ParquetSink}


class ShardWriter:
    """Writes one shard of one source folder. Use as a context manager; nothing is published unless `finish` runs.

    `out_dir` is the source folder, a local path or fsspec URL. Samples must be added in increasing key order;
    every input row gets one `add_status` call, and the `success` rows must be exactly the added samples.
    """

    def __init__(self, out_dir: str, shard: int, fmt: str = "webdataset", *, row_group_size: int = ROW_GROUP_SIZE):
        if fmt not in SINKS:
            raise ValueError(f"unknown shard format {fmt!r}; expected one of {sorted(SINKS)}")
        if shard < 0 or row_group_size < 1:
            raise ValueError(f"shard must be >= 0 and row_group_size >= 1, got {shard} and {row_group_size}")
        self.out_dir, self.shard, self.fmt = out_dir, shard, fmt
        self._tmp = tempfile.mkdtemp(prefix=f"tinymix-{shard:05d}-")
        self._sink = SINKS[fmt](os.path.join(self._tmp, shard_name(shard, fmt)), row_group_size)
        self._index: list[dict[str, Any]] = []
        self._status: list[StatusRow] = []
        self._image_bytes = 0
        self._state = "open"

    def add(self, sample: Sample) -> None:
        self._check_open()
        where = f"{self.out_dir} shard {self.shard} sample {sample.key}"
        if self._index and sample.key <= self._index[-1]["key"]:
            raise ValueError(f"{where}: added after {self._index[-1]['key']}; add samples in increasing key order")
        if sample.extra_images and sample.image is None:
            raise ValueError(f"{where}: extra_images without a first image")
        if sample.image is not None and sample.image_ext not in IMAGE_EXTS:
            raise ValueError(f"{where}: image_ext {sample.image_ext!r} is not one of {IMAGE_EXTS}")
        source = sample.record.get("source")
        if not isinstance(source, str):
            raise ValueError(f"{where}: record has no string 'source' field")
        try:
            text_chars = sum(len(turn["content"]) for turn in sample.record.get("conversation") or [])
        except (TypeError, KeyError) as e:
            raise ValueError(f"{where}: conversation turns must be dicts with a string 'content': {e!r}") from e
        has_image = sample.image is not None
        if not has_image:
            sample = replace(sample, image_ext=None)
        json_bytes = encode_json(sample.record, where)
        location = self._sink.add(sample, json_bytes)
        self._image_bytes += sum(len(b) for b in sample.images)
        caption = sample.caption.encode("utf-8") if sample.caption is not None else None
        # Several images: the crc32 of their bytes end to end, in order (`shards.index.check_members`).
        image = b"".join(sample.images) if has_image else None
        for member, data in (("image", image), ("json", json_bytes), ("txt", caption)):
            location[f"{member}_crc32"] = zlib.crc32(data) if data is not None else -1
        self._index.append(
            {
                "key": sample.key,
                "shard": self.shard,
                "source": source,
                "n_images": len(sample.images),
                "text_chars": text_chars,
                "image_ext": sample.image_ext,
                **location,
            }
        )

    def add_status(self, row: StatusRow) -> None:
        self._check_open()
        self._status.append(row)

    def finish(self, timings: dict[str, float], made_from: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close the data file, write the index part, status and stats, publish them (status last); return stats.

        The stats record each published file's size (`files`), so a resume can tell a damaged shard from a complete
        one, and `made_from` with its `fingerprint` when given (what the shard was built from, see `shards.build`).
        """
        self._check_open()
        self._state = "finished"
        try:
            self._sink.close()
            rows = self._rows_of_samples()
            for entry in self._index:
                entry["row"] = rows[entry["key"]]
            data = os.path.join(self._tmp, shard_name(self.shard, self.fmt))
            index = self._write(lambda p: pq.write_table(index_table(self._index), p), "index")
            status = self._write(lambda p: pq.write_table(status_table(self._status), p), "status")
            extra: dict[str, Any] = {}
            if made_from is not None:
                extra = {"made_from": made_from, "fingerprint": fingerprint(made_from)}
            stats = shard_stats(
                self._status,
                timings,
                shard=self.shard,
                format=self.fmt,
                bytes={"data": os.path.getsize(data), "images": self._image_bytes},
                files={kind: os.path.getsize(p) for kind, p in (("data", data), ("index", index), ("status", status))},
                **extra,
            )
            files = {
                self.fmt: data,
                "index": index,
                "stats": self._write(lambda p: _write_bytes(p, encode_json(stats, "stats") + b"\n"), "stats"),
                "status": status,
            }
            fs.makedirs(self.out_dir)
            fs.clean_stale(self.out_dir, [shard_name(self.shard, k) for k in SUFFIXES])
            # Un-mark the shard first so that a rewrite of a complete shard is never seen half old, half new.
            fs.remove(self._final("status"))
            for kind, local in files.items():  # dict order: data, index, stats, status (the marker) last
                fs.publish(local, self._final(kind))
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return stats

    def abort(self) -> None:
        """Drop everything written so far; nothing is published."""
        if self._state == "open":
            self._state = "aborted"
            try:
                self._sink.close()
            finally:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _rows_of_samples(self) -> dict[str, int]:
        """Input row of each stored sample, checking the status rows account for exactly the stored samples."""
        where = f"{self.out_dir} shard {self.shard}"
        dup = sorted(k for k, n in Counter(r.key for r in self._status).items() if n > 1)[:5]
        if dup:
            raise ValueError(f"{where}: more than one status row for keys {dup}")
        success = {r.key: r.row for r in self._status if r.status == "success"}
        stored = {e["key"] for e in self._index}
        if stored != set(success):
            raise ValueError(
                f"{where}: stored samples without a success status row {sorted(stored - set(success))[:5]}, "
                f"success status rows without a stored sample {sorted(set(success) - stored)[:5]}"
            )
        return success

    def _write(self, write: Any, kind: str) -> str:
        path = os.path.join(self._tmp, shard_name(self.shard, kind))
        write(path)
        return path

    def _final(self, kind: str) -> str:
        return fs.join(self.out_dir, shard_name(self.shard, kind))

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"{self.out_dir} shard {self.shard}: writer is {self._state}")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def fingerprint(made_from: dict[str, Any]) -> str:
    """The sha256 of what a shard was made from, in canonical JSON."""
    return hashlib.sha256(encode_json(made_from, "made_from")).hexdigest()


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def complete_shards(out_dir: str) -> list[int]:
    """The complete shards of a source folder (status, index part and data file present), from one listing."""
    found = shard_files(fs.list_names(out_dir))
    data = found["webdataset"] | found["parquet"]
    return sorted(found["status"] & found["index"] & data)
