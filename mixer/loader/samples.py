"""A plan segment → its index row → the sample's tokens and image → cut and checked tokens + decoded images.

Tokens come from the stage's length index when it stores them (`mixer.lengths`: what `encode` gave at build time),
else from the stored record, tokenised again. Index rows and length-index rows are read one Parquet row group (one
shard's rows) at a time and a bounded number of rows is cached, so a loader over a LAION-size source never holds its
whole index. Anything wrong with one sample at read time — a missing shard, corrupt bytes, a record that no longer
encodes to its planned length or a length index that does not describe the shard index's row (a stale index) —
becomes a `Skip` naming the sample; the caller counts it and goes on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mixer.lengths import TOKEN_COLUMNS
from mixer.loader.images import MeanStd, decode
from mixer.loader.pack import Segment
from mixer.templates import Encoded, FastEncoder, from_stored
from shards import fs
from shards.build import source_dir
from shards.index import MERGED_INDEX, ShardReader

log = logging.getLogger(__name__)

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
TOKEN_CACHE_ROWS = 32_768  # length-index rows of stored tokens a reader caches per source (see TokenRows)
# What can go wrong with one stored sample; anything else is a bug and propagates.
SAMPLE_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, SyntaxError, Image.DecompressionBombError)


class StaleSample(ValueError):
    """The sample no longer encodes to what the plan says: the index or the plan predates the shards or template."""


@dataclass(frozen=True)
class Skip:
    """A planned sample that could not be used, by `source/key`, and why."""

    key: str
    reason: str


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

    A row costs about 100 bytes, so the default holds ~25 MB per source.
    """

    columns = INDEX_COLUMNS

    def __init__(self, url: str, cache_rows: int = 262_144) -> None:
        super().__init__(url, cache_rows)

    def _convert(self, table: pa.Table) -> dict[str, list]:
        return {c: table.column(c).to_pylist() for c in self.columns}

    def row(self, i: int) -> dict[str, Any]:
        """Index row `i` as a dict of the columns ShardReader needs; IndexError outside the index."""
        cols, j = self._locate(i)
        return {c: v[j] for c, v in cols.items()}


def _csr(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64, values) of a list column, offsets relative to the values."""
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    return offsets.astype(np.int64) - int(offsets[0]), arr.flatten().to_numpy()


@dataclass(frozen=True)
class _TokenGroup:
    keys: list[str]
    ids: tuple[np.ndarray, np.ndarray]
    spans: tuple[np.ndarray, np.ndarray]
    ends: tuple[np.ndarray, np.ndarray]


class TokenRows(RowGroups):
    """The stored tokens of one source's length index (`mixer.lengths`, format 2) by row number (see RowGroups).

    A row holds its text tokens once (4 bytes each; an image is one id), so the default bound is ~80 MB for
    ~600-token conversations and a few MB for captions. A miss decodes the whole row group (one shard's rows): ~5 ms
    for 1,000 conversations of 600 tokens, against ~0.7 ms to tokenise one, so `SampleReader` serves stored tokens
    only for a source whose whole index fits the cache (the plan reads a source in random order).
    """

    columns = ("key", "turn_ends", *TOKEN_COLUMNS)

    def __init__(self, url: str, image_id: int, n_image_tokens: int, cache_rows: int = TOKEN_CACHE_ROWS) -> None:
        super().__init__(url, cache_rows)
        self.image_id, self.n_image_tokens = image_id, n_image_tokens

    def _convert(self, table: pa.Table) -> _TokenGroup:
        return _TokenGroup(
            keys=table.column("key").to_pylist(),
            ids=_csr(table.column("input_ids")),
            spans=_csr(table.column("loss_spans")),
            ends=_csr(table.column("turn_ends")),
        )

    def row(self, i: int) -> tuple[str, Encoded]:
        """(key, the sample's `Encoded` as `encode` gave it at build time) of length-index row `i`."""
        g, j = self._locate(i)
        (io, iv), (so, sv), (eo, ev) = g.ids, g.spans, g.ends
        enc = from_stored(
            iv[io[j] : io[j + 1]], sv[so[j] : so[j + 1]], ev[eo[j] : eo[j + 1]], self.image_id, self.n_image_tokens
        )
        return g.keys[j], enc


def cut(enc: Encoded, tokens: int, truncated: bool, key: str) -> Encoded:
    """The encoded sample as planned: whole (its length must be `tokens`) or cut after the turn ending at `tokens`.

    Raises StaleSample when the encoding does not fit the plan (the lengths were computed from other data).
    """
    n = len(enc.input_ids)
    if not truncated:
        if n != tokens:
            raise StaleSample(f"sample {key}: encodes to {n} tokens, the plan says {tokens} (stale index?)")
        return enc
    if tokens not in enc.turn_ends or tokens >= n:
        raise StaleSample(
            f"sample {key}: planned cut at {tokens} is not a turn end of its {n} tokens {enc.turn_ends} (stale index?)"
        )
    return Encoded(
        input_ids=enc.input_ids[:tokens],
        labels=enc.labels[:tokens],
        image_starts=[s for s in enc.image_starts if s < tokens],
        turn_ends=[e for e in enc.turn_ends if e <= tokens],
    )


@dataclass(frozen=True)
class SampleSpec:
    """How a stage turns stored samples into segments (from its stage.json).

    `lengths`, by source in `sources` order, is the URL of a length index holding stored tokens (`mixer.lengths`,
    format 2): those sources serve the build's tokens. A source with None, or past the end, is tokenised at read time,
    and so is one whose length index has more rows than a reader caches (see TokenRows).
    """

    out: str
    sources: tuple[str, ...]
    template: str
    image_tokens: int
    image_size: int
    mean_std: MeanStd
    lengths: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Loaded:
    """A planned sample, read and encoded: its segment and its decoded images (RGB, `image_size` square)."""

    segment: Segment
    images: list[Image.Image]


class SampleReader:
    """Reads planned segments of one stage; holds open index files and shard handles, so create it per worker.

    A source with stored tokens costs one length-index row (cached by row group) and the image's byte range; one
    without reads the record too and tokenises it (`FastEncoder`: the length index ran `encode`'s whole-text check
    at build time, here the planned length is the check).
    """

    def __init__(self, spec: SampleSpec, tokenizer: Any, token_cache_rows: int = TOKEN_CACHE_ROWS) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.encode = FastEncoder(tokenizer, spec.template, spec.image_tokens)
        self.indexes = [IndexRows(fs.join(source_dir(spec.out, s), MERGED_INDEX)) for s in spec.sources]
        self.readers = [ShardReader(source_dir(spec.out, s)) for s in spec.sources]
        urls = list(spec.lengths)[: len(spec.sources)]
        urls += [None] * (len(spec.sources) - len(urls))
        self.tokens = [self._token_rows(url, token_cache_rows) if url is not None else None for url in urls]

    def _token_rows(self, url: str, cache_rows: int) -> TokenRows | None:
        """The stored tokens at `url` if the source's whole length index fits the cache, else None (tokenise)."""
        rows = TokenRows(url, self.encode.image_id, self.spec.image_tokens, cache_rows)
        if len(rows) <= cache_rows:
            return rows
        # Read in random order, most rows would miss the cache and decode a whole row group: tokenising is cheaper.
        log.info("%s: %d rows, more than the %d cached: tokenised at read time", url, len(rows), cache_rows)
        rows.close()
        return None

    def segment(self, seg: np.void) -> Loaded | Skip:
        """The segment `seg` (a SEGMENT_DTYPE row of the plan) ready to pack, or a Skip saying why not."""
        source, sample = int(seg["source"]), int(seg["sample"])
        row = self.indexes[source].row(sample)
        key = f"{self.spec.sources[source]}/{row['key']}"
        try:
            return self._load(row, key, sample, int(seg["tokens"]), bool(seg["truncated"]), source)
        except SAMPLE_ERRORS as e:
            return Skip(key, f"{type(e).__name__}: {e}")

    def _load(self, row: dict[str, Any], key: str, sample: int, tokens: int, truncated: bool, source: int) -> Loaded:
        stored_tokens = self.tokens[source]
        if stored_tokens is None:
            stored = self.readers[source].read(row)
            rec = stored["record"]
            enc = self.encode(rec["conversation"], task=rec.get("task"), key=key)
            image = stored["image"]
        else:
            enc = self._stored(stored_tokens, row, key, sample)
            image = None
        enc = cut(enc, tokens, truncated, key)
        images = []
        if enc.image_starts:
            if stored_tokens is not None:
                image = self._image(row, source)
            if image is None:
                raise ValueError(f"sample {key}: {len(enc.image_starts)} image span(s) but no stored image")
            if len(enc.image_starts) != 1:
                raise ValueError(f"sample {key}: {len(enc.image_starts)} image spans for one stored image")
            images.append(decode(image, self.spec.image_size))
        return Loaded(Segment(enc.input_ids, enc.labels, enc.image_starts), images)

    @staticmethod
    def _stored(rows: TokenRows, row: dict[str, Any], key: str, sample: int) -> Encoded:
        """The build's tokens of index row `sample`; StaleSample when the length index does not describe it."""
        try:
            length_key, enc = rows.row(sample)
        except IndexError as e:
            raise StaleSample(f"sample {key}: {e}") from e
        if length_key != row["key"]:
            raise StaleSample(
                f"sample {key}: length index row {sample} is key {length_key!r}, the shard index's is {row['key']!r} "
                f"({rows.url}: stale index?)"
            )
        return enc

    def _image(self, row: dict[str, Any], source: int) -> bytes | None:
        """The stored image bytes alone: in a tar, one ranged read of the image member (not the JSON or caption)."""
        ext = row["image_ext"]
        if not ext:
            return None
        if row["row_group"] < 0:
            if row["image_offset"] < 0:
                return None
            row = {**row, "json_offset": -1, "txt_offset": -1}
        return self.readers[source].members(row).get(ext)

    def segments(self, sequence: np.ndarray) -> tuple[list[Loaded], list[Skip]]:
        """The usable samples of one planned sequence, in order, and the skipped ones."""
        out: list[Loaded] = []
        skips: list[Skip] = []
        for seg in sequence:
            got = self.segment(seg)
            (skips if isinstance(got, Skip) else out).append(got)  # type: ignore[arg-type]
        return out, skips

    def close(self) -> None:
        for r in self.readers:
            r.close()
        for i in self.indexes:
            i.close()
        for t in self.tokens:
            if t is not None:
                t.close()
