"""The length index: every stored sample's token count, turn cut points and tokens for one stage's tokenisation.

Computed per shard as Ray tasks, cached under `OUT/lengths/<cache key>/<source>/` where the key hashes (tokenizer,
template, image tokens per image, `LENGTH_FORMAT`): stages that share all of them share one index, a rerun reuses
finished shards, and an index of an older format is recomputed under a new key rather than misread.
Rows follow the source's `index.parquet` row for row, so row `i` of both describes the same sample. A sample whose
tokenisation mismatches (see `mixer.templates.encode`) gets length 0, no tokens and its error; the planner never
places it.

Files per source folder: per shard `<shard>.parquet` (length rows) and `<shard>.tokens` (the tokens `encode` gave at
build time, in the stored form of `mixer.templates.stored`: ids with each image run collapsed to one image id, loss
spans, turn ends, key; uint16 ids when the vocabulary fits), then the merged `lengths.parquet` with the columns `key`,
`length`, `n_images`, `turn_ends`, `error` (what the planner and `mixer inspect` read), a row group per shard, and
`rows.npy`: the source's index rows at a fixed width, which the loader looks a sample up in with one small read
(it depends on the shards only; each tokenisation's folder has its copy, ~100 bytes a sample); locally also the
planner's columns as `.npy` files (`COLUMN_FILES`), which `read_lengths` memory-maps.
The loader serves a sample's tokens with one ranged read of its shard's token file instead of tokenising again.
Each shard's token file is published before its part, and the merged file (marked with `LENGTH_FORMAT` in its
metadata) after every part, so an existing file says everything before it is complete (locally or on a store).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mixer.templates import TokenizationMismatch, encode, to_stored
from mixer.templates.stored import pack_record, pack_tokens, token_dtype
from shards import fs
from shards.build import source_dir
from shards.cluster import cluster_cpus, connect, die_with_node
from shards.index import MERGED_INDEX, ShardReader, shard_name
from shards.progress import progress as progress_bar  # `progress` is build_lengths' flag

LENGTH_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("n_images", pa.int8(), nullable=False),
        pa.field("turn_ends", pa.list_(pa.int32()), nullable=False),
        pa.field("error", pa.string()),
    ]
)
# Bumped whenever the files change: part of the cache key, so an index of another format is never reused.
LENGTH_FORMAT = 3
# In the merged lengths.parquet's metadata: its format, written only once every shard's token file is complete.
FORMAT_META = b"tinymix.length_format"
TOKENS_SUFFIX = ".tokens"
# the planner's columns, memory-mapped by `read_lengths`: name -> (dtype, what it holds)
COLUMN_FILES = {
    "lengths": ("<i4", "tokens per sample, 0 where tokenisation failed"),
    "images": ("<i1", "images per sample"),
    "turn_offsets": ("<i8", "CSR offsets into turn_values, rows + 1"),
    "turn_values": ("<i4", "turn ends (cut points) of every sample, concatenated"),
}
ROWS_FILE = "rows.npy"  # the source's index rows, fixed width (`write_rows`): what the loader looks a sample up in
# the location columns of an index row (shards.index.INDEX_SCHEMA) and the row's place in its shard
ROW_FIELDS = [
    ("shard", "<i4"),
    ("in_shard", "<i4"),
    *((f"{m}_{c}", "<i8") for m in ("image", "json", "txt") for c in ("offset", "size")),
    ("row_group", "<i4"),
    ("row_in_group", "<i4"),
]


@lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from mixer.tokenizer import load_tokenizer  # transformers: only where tokenising happens

    return load_tokenizer(path)


def cache_key(tokenizer_path: str, template: str, n_image_tokens: int) -> str:
    """Identity of a tokenisation and of the index format: tokenizer, template, image tokens, `LENGTH_FORMAT`.

    The tokenizer counts by its full serialisation, not just its name.
    """
    tok = _tokenizer(tokenizer_path)
    backend = getattr(tok, "backend_tokenizer", None)
    ident = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    h = hashlib.sha256()
    for part in (ident, template, str(n_image_tokens), json.dumps(tok.all_special_tokens), f"v{LENGTH_FORMAT}"):
        h.update(part.encode())
        h.update(b"\0")
    return f"{template}-{n_image_tokens}-{h.hexdigest()[:12]}"


def shard_part(
    src_dir: str, shard: int, tokenizer_path: str, template: str, n_image_tokens: int
) -> tuple[pa.Table, bytes]:
    """(length rows, token file bytes) of one shard's samples, both in the shard's index order."""
    tok = _tokenizer(tokenizer_path)
    dtype = token_dtype(len(tok))
    index = pq.read_table(fs.join(src_dir, shard_name(shard, "index"))).to_pylist()
    rows: dict[str, list] = {name: [] for name in LENGTH_SCHEMA.names}
    records = []
    empty = np.zeros(0, dtype=np.int32)
    with ShardReader(src_dir) as reader:
        for r in index:
            rec = reader.read(r)["record"]
            try:
                enc = encode(rec["conversation"], tok, template, n_image_tokens, task=rec.get("task"), key=r["key"])
                length, ends, error = len(enc.input_ids), enc.turn_ends, None
                ids, spans = to_stored(enc, n_image_tokens)
            except (TokenizationMismatch, ValueError) as e:
                length, ends, error, ids, spans = 0, [], str(e), empty, empty
            for name, value in zip(LENGTH_SCHEMA.names, (r["key"], length, r["n_images"], ends, error), strict=True):
                rows[name].append(value)
            records.append(pack_record(r["key"], ids, spans, ends, dtype))
    return pa.table(rows, schema=LENGTH_SCHEMA), pack_tokens(records, dtype)


def part_url(ldir: str, shard: int) -> str:
    """A shard's length part; its existence says the shard's token file is complete too."""
    return fs.join(ldir, f"{shard:05d}.parquet")


def tokens_url(ldir: str, shard: int) -> str:
    """A shard's token file (`mixer.templates.stored`)."""
    return fs.join(ldir, f"{shard:05d}{TOKENS_SUFFIX}")


def write_part(src_dir: str, shard: int, ldir: str, tokenizer_path: str, template: str, n_img: int) -> int:
    """Write one shard's token file, then its length part (each atomically); return the shard's rows.

    The part appears last: a killed task leaves at most a token file without a part, which a rerun rewrites.
    """
    table, tokens = shard_part(src_dir, shard, tokenizer_path, template, n_img)
    fs.makedirs(ldir)
    fs.put_bytes(tokens_url(ldir, shard), tokens)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    fs.put_bytes(part_url(ldir, shard), buf.getvalue().to_pybytes())
    return table.num_rows


def _part_task(src_dir: str, shard: int, ldir: str, tokenizer_path: str, template: str, n_img: int) -> int:
    """`write_part` in a Ray worker that dies with its node, so a killed build leaves no task writing parts."""
    die_with_node()
    return write_part(src_dir, shard, ldir, tokenizer_path, template, n_img)


def lengths_dir(out: str, key: str, source: str) -> str:
    return fs.join(out, "lengths", key, source)


def build_lengths(
    out: str,
    sources: list[str],
    tokenizer_path: str,
    template: str,
    n_image_tokens: int,
    *,
    ray_address: str | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Compute (or reuse) the length index of each source; return source → merged `lengths.parquet` URL."""
    key = cache_key(tokenizer_path, template, n_image_tokens)
    connect(ray_address)
    task = ray.remote(max_retries=3, retry_exceptions=True, scheduling_strategy="SPREAD")(_part_task)
    todo: list[tuple[str, int, str]] = []
    merged: dict[str, str] = {}
    for name in sources:
        src, ldir = source_dir(out, name), lengths_dir(out, key, name)
        merged[name] = merged_url(ldir)
        if not fs.exists(merged[name]):
            todo += [(src, shard, ldir) for shard in _missing_parts(src, ldir)]
    refs = [task.remote(src, shard, ldir, tokenizer_path, template, n_image_tokens) for src, shard, ldir in todo]
    limit = 4 * cluster_cpus()
    with progress_bar(
        total=len(refs), desc=f"lengths {template}/{n_image_tokens}", unit=" shards", disable=not progress
    ) as bar:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=min(len(pending), limit), timeout=None)
            ray.get(done)
            bar.update(len(done))
    for name in sources:
        if not fs.exists(merged[name]):
            _merge(source_dir(out, name), lengths_dir(out, key, name), merged[name])
    return merged


def _shards_of(src_dir: str) -> list[int]:
    index = pq.read_table(fs.join(src_dir, "index.parquet"), columns=["shard"]).column("shard").to_numpy()
    return sorted(set(index.tolist())) if len(index) else []


def merged_url(ldir: str) -> str:
    """A source's merged length index; its existence says every shard's part and token file is complete."""
    return fs.join(ldir, "lengths.parquet")


def _missing_parts(src_dir: str, ldir: str) -> list[int]:
    """The source's shards without a finished length part (what a rerun still has to compute)."""
    return [shard for shard in _shards_of(src_dir) if not fs.exists(part_url(ldir, shard))]


def write_source_lengths(src_dir: str, ldir: str, tokenizer_path: str, template: str, n_image_tokens: int) -> str:
    """`build_lengths` for one source in this process, without Ray (tests, benches); return the merged URL.

    Reuses the finished parts of `ldir` as `build_lengths` does.
    """
    merged = merged_url(ldir)
    if fs.exists(merged):
        return merged
    for shard in _missing_parts(src_dir, ldir):
        write_part(src_dir, shard, ldir, tokenizer_path, template, n_image_tokens)
    _merge(src_dir, ldir, merged)
    return merged


def rows_url(ldir: str) -> str:
    """A source's fixed-width index rows (`write_rows`), beside its merged length index."""
    return fs.join(ldir, ROWS_FILE)


def row_dtype(key_bytes: int, ext_bytes: int) -> np.dtype:
    """One record of `rows.npy`: the index row's key and image extension (UTF-8, zero-padded) and its locations."""
    return np.dtype([("key", f"S{max(key_bytes, 1)}"), ("image_ext", f"S{max(ext_bytes, 1)}"), *ROW_FIELDS])


def write_rows(src_dir: str, target: str, batch_rows: int = 65536) -> int:
    """Write the source's `index.parquet` as a `.npy` of fixed-width records (`row_dtype`); return its rows.

    Row `i` of the source is at byte `header + i * itemsize`: one small read (or a page of a memory map) instead of a
    row group's decode. `in_shard` is the row's place in its shard (the row of the shard's token file). Streams the
    index twice, a batch at a time: once for the widths of the string columns, once to write.
    """
    fsys, path = fs.resolve(fs.join(src_dir, MERGED_INDEX))
    with fsys.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        widths = [1, 1]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["key", "image_ext"]):
            for k, name in enumerate(("key", "image_ext")):
                longest = pc.max(pc.binary_length(pc.cast(batch.column(name), pa.binary()))).as_py()
                widths[k] = max(widths[k], longest or 0)
        dtype = row_dtype(*widths)
        located = [name for name, _ in ROW_FIELDS if name != "in_shard"]
        shard, count = -1, 0  # the shard the previous batch ended in, and its rows so far
        tmp = target + ".tmp"
        with fsspec.open(tmp, "wb", auto_mkdir=True) as out:
            shape = (pf.metadata.num_rows,)
            np.lib.format.write_array_header_2_0(
                out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            )
            for batch in pf.iter_batches(batch_size=batch_rows, columns=["key", "image_ext", *located]):
                k = batch.num_rows
                if not k:
                    continue
                rec = np.zeros(k, dtype=dtype)
                rec["key"] = [key.encode() for key in batch.column("key").to_pylist()]
                rec["image_ext"] = [(e or "").encode() for e in batch.column("image_ext").to_pylist()]
                for name in located:
                    rec[name] = batch.column(name).to_numpy()
                # a shard's rows are contiguous and in order: number them within each run of one shard
                sh, idx = rec["shard"], np.arange(k)
                new = np.empty(k, dtype=bool)
                new[0], new[1:] = sh[0] != shard, sh[1:] != sh[:-1]
                within = idx - np.maximum.accumulate(np.where(new, idx, 0))
                within[~np.logical_or.accumulate(new)] += count  # the run the previous batch was in goes on
                rec["in_shard"] = within
                shard, count = int(sh[-1]), int(within[-1]) + 1
                out.write(rec.tobytes())
    fs_, target_path = fs.resolve(target)
    fs_.mv(fs.resolve(tmp)[1], target_path)
    return pf.metadata.num_rows


def _merge(src_dir: str, ldir: str, target: str) -> None:
    """Concatenate the shard parts in index order into one file, a row group per part; mark it with its format.

    The fixed-width index rows (`write_rows`) are written first: the merged file's existence says they are complete.
    """
    write_rows(src_dir, rows_url(ldir))
    tmp = target + ".tmp"
    schema = LENGTH_SCHEMA.with_metadata({FORMAT_META: str(LENGTH_FORMAT).encode()})
    columns = _Columns(ldir) if fs.is_local(ldir) else None
    with fsspec.open(tmp, "wb", auto_mkdir=True) as f, pq.ParquetWriter(f, schema) as w:
        for shard in _shards_of(src_dir):  # index.parquet holds the shards in order, so rows line up with it
            fsys, path = fs.resolve(part_url(ldir, shard))
            with fsys.open(path, "rb") as pf:
                part = pq.read_table(pf, schema=LENGTH_SCHEMA)
            w.write_table(part.replace_schema_metadata(schema.metadata), row_group_size=max(1, part.num_rows))
            if columns is not None:
                columns.add(part)
    if columns is not None:
        columns.close()
    fs_, path = fs.resolve(target)
    fs_.mv(fs.resolve(tmp)[1], path)


class _Columns:
    """The planner's columns of a local length index as `.npy` files beside it (`COLUMN_FILES`), fed part by part.

    Each column is appended to a raw temp file, then written as `header + raw`: memory stays one part's worth.
    """

    def __init__(self, ldir: str) -> None:
        self.ldir = fs.resolve(ldir)[1]
        self.raw = {name: open(os.path.join(self.ldir, f"{name}.raw.tmp"), "wb") for name in COLUMN_FILES}  # noqa: SIM115
        self.rows, self.values = 0, 0

    def add(self, part: pa.Table) -> None:
        ends = part.column("turn_ends").combine_chunks()
        offsets = ends.offsets.to_numpy().astype(np.int64) - ends.offset + self.values
        self.raw["lengths"].write(part.column("length").to_numpy().astype("<i4").tobytes())
        self.raw["images"].write(part.column("n_images").to_numpy().astype("<i1").tobytes())
        self.raw["turn_offsets"].write(offsets[:-1].astype("<i8").tobytes())
        self.raw["turn_values"].write(ends.values.to_numpy().astype("<i4").tobytes())
        self.rows += part.num_rows
        self.values += len(ends.values)

    def close(self) -> None:
        self.raw["turn_offsets"].write(np.array([self.values], dtype="<i8").tobytes())
        for name, (dtype, _) in COLUMN_FILES.items():
            self.raw[name].close()
            rows = self.values if name == "turn_values" else self.rows + (name == "turn_offsets")
            tmp, raw = os.path.join(self.ldir, f"{name}.npy.tmp"), os.path.join(self.ldir, f"{name}.raw.tmp")
            with open(tmp, "wb") as out, open(raw, "rb") as src:
                header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (rows,)}
                np.lib.format.write_array_header_2_0(out, header)
                shutil.copyfileobj(src, out, 1 << 22)
            os.replace(tmp, os.path.join(self.ldir, f"{name}.npy"))
            os.remove(raw)


def read_lengths(url: str) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """(lengths int32, turn_ends CSR (offsets int64, values int32), images int8) of a merged length index.

    Memory-mapped from the `.npy` columns beside a local index (`COLUMN_FILES`): planning a source then holds only
    the pages it touches, not the source. Read whole from the Parquet file otherwise (an index on an object store,
    or one written before the columns existed).
    """
    ldir = url.rsplit("/", 1)[0] if "://" in url else os.path.dirname(url)
    if fs.is_local(url) and all(os.path.exists(os.path.join(fs.resolve(ldir)[1], f"{n}.npy")) for n in COLUMN_FILES):
        col = {n: np.load(os.path.join(fs.resolve(ldir)[1], f"{n}.npy"), mmap_mode="r") for n in COLUMN_FILES}
        return col["lengths"], (col["turn_offsets"], col["turn_values"]), col["images"]
    table = pq.read_table(url, columns=["length", "n_images", "turn_ends"])
    lengths = table.column("length").to_numpy().astype(np.int32, copy=False)
    images = table.column("n_images").to_numpy().astype(np.int8, copy=False)
    ends = table.column("turn_ends").combine_chunks()
    offsets = ends.offsets.to_numpy().astype(np.int64) - ends.offset
    values = ends.values.to_numpy().astype(np.int32, copy=False)
    return lengths, (offsets, values), images


def has_tokens(url: str) -> bool:
    """Whether the merged length index at `url` exists and has a token file per shard beside it (format 3).

    An index of an older format (none, or tokens in list columns) is not read for tokens: the loader tokenises.
    """
    if not fs.exists(url):
        return False
    fsys, path = fs.resolve(url)
    with fsys.open(path, "rb") as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    return meta.get(FORMAT_META) == str(LENGTH_FORMAT).encode()


def iter_errors(url: str) -> Iterator[tuple[str, str]]:
    """(key, error) of every sample whose tokenisation failed."""
    for batch in pq.ParquetFile(url).iter_batches(columns=["key", "error"]):
        for key, err in zip(batch.column("key").to_pylist(), batch.column("error").to_pylist(), strict=True):
            if err is not None:
                yield key, err
