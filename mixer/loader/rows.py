"""Random access by row to what the loader reads per sample: index rows and stored tokens.

Index rows come from the length index's fixed-width `rows.npy` (`FixedRows`: one record, memory-mapped or one ranged
read), or from `index.parquet` a row group at a time, LRU-cached, for a length index written before it (`IndexRows`);
stored tokens from per-shard token files, one ranged read a sample.

The plan reads every source in random order, so what a read costs on a cache miss decides the loader's speed on a
large source: a fixed-width row and a sample's stored tokens cost one small read whatever the source's size; a
Parquet index row costs its row group (~1.6 ms at 1,000 rows, ~11 ms at 10,000: `bench/mixer/lookups.py`).
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mixer.lengths import tokens_url
from mixer.templates import Encoded, from_stored
from mixer.templates.stored import HEADER, read_header, unpack_record
from shards import fs

INDEX_COLUMNS = (
    "key",
    "shard",
    "image_ext",
    "image_offset",
    "image_size",
    "json_offset",
    "json_size",
    "txt_offset",
    "txt_size",
    "row_group",
    "row_in_group",
)
TOKEN_CACHE_SHARDS = 32  # token files whose offsets (8 bytes a row) and handle a reader keeps per source
HEAD_ROWS = 4096  # a token file's first read takes the offsets of this many rows with the header: one read if fewer
ROWS_HEAD = 4096  # bytes read for the header of a remote rows.npy (numpy pads it to a multiple of 64; ~400 here)


class RowGroups:
    """Rows of one Parquet file by row number, read one row group at a time and kept in an LRU cache.

    `cache_rows` bounds the rows held (the group just read always stays, whatever its size). A subclass names its
    `columns` and turns a row group's table into whatever its rows are served from (`_convert`).
    """

    columns: tuple[str, ...] = ()

    def __init__(self, url: str, cache_rows: int) -> None:
        self.url = url
        self.cache_rows = cache_rows
        self._file: pq.ParquetFile | None = None
        self._handle: Any = None
        self._starts = np.zeros(1, dtype=np.int64)
        self._groups: OrderedDict[int, tuple[Any, int]] = OrderedDict()
        self._cached = 0

    def _open(self) -> pq.ParquetFile:
        if self._file is None:
            fsys, path = fs.resolve(self.url)
            self._handle = fsys.open(path, "rb")
            self._file = pq.ParquetFile(self._handle)
            counts = [self._file.metadata.row_group(i).num_rows for i in range(self._file.num_row_groups)]
            self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        return self._file

    def __len__(self) -> int:
        self._open()
        return int(self._starts[-1])

    @property
    def cached_rows(self) -> int:
        return self._cached

    def _locate(self, i: int) -> tuple[Any, int]:
        """(the converted row group holding row `i`, `i`'s row within it); IndexError outside the file."""
        pf = self._open()
        if not 0 <= i < self._starts[-1]:
            raise IndexError(f"{self.url}: row {i} outside 0..{int(self._starts[-1]) - 1} (plan and index disagree)")
        g = int(np.searchsorted(self._starts, i, side="right")) - 1
        got = self._groups.get(g)
        if got is None:
            table = pf.read_row_group(g, columns=list(self.columns))
            got = self._groups[g] = (self._convert(table), table.num_rows)
            self._cached += table.num_rows
            while self._cached > self.cache_rows and len(self._groups) > 1:
                _, (_, n) = self._groups.popitem(last=False)
                self._cached -= n
        else:
            self._groups.move_to_end(g)
        return got[0], i - int(self._starts[g])

    def _convert(self, table: pa.Table) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._file, self._handle, self._groups, self._cached = None, None, OrderedDict(), 0


class IndexRows(RowGroups):
    """Rows of one source's merged `index.parquet` by row number (see RowGroups).

    A row costs about 100 bytes, so the default holds ~25 MB per source. `merge_index` writes one row group per
    shard, so a row's place in its group is its row in the shard: the row of the shard's token file.
    """

    columns = INDEX_COLUMNS

    def __init__(self, url: str, cache_rows: int = 262_144) -> None:
        super().__init__(url, cache_rows)

    def _convert(self, table: pa.Table) -> dict[str, list]:
        return {c: table.column(c).to_pylist() for c in self.columns}

    def row_at(self, i: int) -> tuple[dict[str, Any], int]:
        """(index row `i` as a dict of the columns ShardReader needs, its row in its shard); IndexError outside."""
        cols, j = self._locate(i)
        return {c: v[j] for c, v in cols.items()}, j

    def row(self, i: int) -> dict[str, Any]:
        """Index row `i` as a dict of the columns ShardReader needs; IndexError outside the index."""
        return self.row_at(i)[0]


class FixedRows:
    """Rows of one source's index by row number from its fixed-width `rows.npy` (`mixer.lengths.write_rows`).

    A row is one record at a known byte offset: a page of a memory map locally, one ranged read of ~100 bytes on an
    object store; nothing is decoded but the row itself and nothing is cached, so memory does not grow with the
    source and a random order costs what a sequential one does.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        fsys, path = fs.resolve(url)
        if isinstance(fsys, LocalFileSystem):
            self._rows: np.ndarray | None = np.load(path, mmap_mode="r")
            self.dtype, self._n, self._data = self._rows.dtype, len(self._rows), 0
        else:
            self._rows = None
            self._fs, self._path = fsys, path  # resolved once: fsspec's URL parsing costs more than a small read
            head = io.BytesIO(fsys.cat_file(path, start=0, end=ROWS_HEAD))
            if np.lib.format.read_magic(head) != (2, 0):  # write_rows writes format 2.0
                raise ValueError(f"{url}: not a rows file of this version")
            shape, _, self.dtype = np.lib.format.read_array_header_2_0(head)
            self._n, self._data = int(shape[0]), head.tell()
        self._names = self.dtype.names

    def __len__(self) -> int:
        return self._n

    def row_at(self, i: int) -> tuple[dict[str, Any], int]:
        """(index row `i` as a dict of the columns ShardReader needs, its row in its shard); IndexError outside."""
        if not 0 <= i < self._n:
            raise IndexError(f"{self.url}: row {i} outside 0..{self._n - 1} (plan and index disagree)")
        if self._rows is not None:
            rec = self._rows[i]
        else:
            size, start = self.dtype.itemsize, self._data + i * self.dtype.itemsize
            data = self._fs.cat_file(self._path, start=start, end=start + size)
            if len(data) != size:
                raise ValueError(f"{self.url}: wanted {size} bytes at offset {start}, got {len(data)} (truncated?)")
            rec = np.frombuffer(data, dtype=self.dtype)[0]
        row = dict(zip(self._names, rec.tolist(), strict=True))
        row["key"] = row["key"].decode()
        row["image_ext"] = row["image_ext"].decode() or None
        return row, row["in_shard"]

    def row(self, i: int) -> dict[str, Any]:
        return self.row_at(i)[0]

    def close(self) -> None:
        self._rows = None


@dataclass
class _TokenShard:
    url: str
    dtype: np.dtype
    offsets: np.ndarray  # uint64, rows + 1
    fd: int | None  # an open file locally; None on an object store (ranged GETs)


class TokenFiles:
    """The stored tokens of one source by (shard, row in the shard), from the token files of its length index folder.

    A sample costs one ranged read of its record (`pread` locally, a ranged GET on object stores: a few hundred bytes
    to a few KB). A shard's offsets (8 bytes a row) come with its first read and are kept, with the open file, for
    the `cache_shards` most recently used shards: memory is bounded by the shards kept, whatever the source's size.
    """

    def __init__(self, ldir: str, image_id: int, n_image_tokens: int, cache_shards: int = TOKEN_CACHE_SHARDS) -> None:
        if cache_shards < 1:
            raise ValueError(f"cache_shards must be >= 1, got {cache_shards}")
        self.ldir, self.image_id, self.n_image_tokens = ldir, image_id, n_image_tokens
        self.cache_shards = cache_shards
        fsys, path = fs.resolve(ldir)
        self._local_dir = path if isinstance(fsys, LocalFileSystem) else None  # resolved once: fsspec takes ~30 µs
        self._shards: OrderedDict[int, _TokenShard] = OrderedDict()

    @property
    def cached_shards(self) -> int:
        return len(self._shards)

    def row(self, shard: int, j: int) -> tuple[str, Encoded]:
        """(key, the sample's `Encoded` as `encode` gave it at build time) of row `j` of `shard`'s token file.

        IndexError when the file has no row `j`; OSError / ValueError for a missing or damaged file.
        """
        t = self._shard(shard)
        rows = len(t.offsets) - 1
        if not 0 <= j < rows:
            raise IndexError(f"{t.url}: row {j} outside 0..{rows - 1}")
        start, end = int(t.offsets[j]), int(t.offsets[j + 1])
        key, ids, spans, ends = unpack_record(self._read(t.url, t.fd, start, end - start), t.dtype)
        return key, from_stored(ids, spans, ends, self.image_id, self.n_image_tokens)

    def _shard(self, shard: int) -> _TokenShard:
        t = self._shards.get(shard)
        if t is not None:
            self._shards.move_to_end(shard)
            return t
        url = tokens_url(self.ldir, shard)
        fd = None
        if self._local_dir is not None:
            fd = os.open(os.path.join(self._local_dir, os.path.basename(url)), os.O_RDONLY)
        try:
            head = self._read(url, fd, 0, HEADER.itemsize + 8 * (HEAD_ROWS + 1), exact=False)
            dtype, rows = read_header(head, url)
            want = 8 * (rows + 1)
            raw = head[HEADER.itemsize : HEADER.itemsize + want]
            if len(raw) < want:
                raw += self._read(url, fd, HEADER.itemsize + len(raw), want - len(raw))
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        t = self._shards[shard] = _TokenShard(url, dtype, np.frombuffer(raw, dtype="<u8"), fd)
        while len(self._shards) > self.cache_shards:
            _, old = self._shards.popitem(last=False)
            if old.fd is not None:
                os.close(old.fd)
        return t

    @staticmethod
    def _read(url: str, fd: int | None, start: int, size: int, exact: bool = True) -> bytes:
        if fd is None:
            if exact:
                return fs.read_range(url, start, size)
            fsys, path = fs.resolve(url)
            return fsys.cat_file(path, start=start, end=start + size)  # fewer bytes at the end of the file
        data = os.pread(fd, size, start)
        if exact and len(data) != size:
            raise ValueError(f"{url}: wanted {size} bytes at offset {start}, got {len(data)} (file truncated?)")
        return data

    def close(self) -> None:
        for t in self._shards.values():
            if t.fd is not None:
                os.close(t.fd)
        self._shards = OrderedDict()
