"""A plan segment → its index row → the stored sample → encoded, cut and checked tokens + decoded images.

Index rows are read one Parquet row group (one shard's rows) at a time and a bounded number of rows is cached, so a
loader over a LAION-size source never holds its whole index. Anything wrong with one sample at read time — a missing
shard, corrupt bytes, a record that no longer encodes to its planned length (a stale index) — becomes a `Skip`
naming the sample; the caller counts it and goes on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from mixer.loader.images import MeanStd, decode
from mixer.loader.pack import Segment
from mixer.templates import Encoded, FastEncoder
from shards import fs
from shards.build import source_dir
from shards.index import MERGED_INDEX, ShardReader

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
# What can go wrong with one stored sample; anything else is a bug and propagates.
SAMPLE_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, SyntaxError, Image.DecompressionBombError)


class StaleSample(ValueError):
    """The sample no longer encodes to what the plan says: the index or the plan predates the shards or template."""


@dataclass(frozen=True)
class Skip:
    """A planned sample that could not be used, by `source/key`, and why."""

    key: str
    reason: str


class IndexRows:
    """Rows of one source's merged `index.parquet` by row number, read a row group at a time (LRU-cached).

    `cache_rows` bounds the rows held: a row costs about 100 bytes, so the default holds ~25 MB per source.
    """

    def __init__(self, url: str, cache_rows: int = 262_144) -> None:
        self.url = url
        self.cache_rows = cache_rows
        self._file: pq.ParquetFile | None = None
        self._handle: Any = None
        self._starts = np.zeros(1, dtype=np.int64)
        self._groups: OrderedDict[int, dict[str, Any]] = OrderedDict()
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

    def row(self, i: int) -> dict[str, Any]:
        """Index row `i` as a dict of the columns ShardReader needs; IndexError outside the index."""
        pf = self._open()
        if not 0 <= i < self._starts[-1]:
            raise IndexError(f"{self.url}: row {i} outside 0..{int(self._starts[-1]) - 1} (plan and index disagree)")
        g = int(np.searchsorted(self._starts, i, side="right")) - 1
        cols = self._groups.get(g)
        if cols is None:
            table = pf.read_row_group(g, columns=list(INDEX_COLUMNS))
            cols = {c: table.column(c).to_pylist() for c in INDEX_COLUMNS}
            self._groups[g] = cols
            self._cached += table.num_rows
            while self._cached > self.cache_rows and len(self._groups) > 1:
                _, old = self._groups.popitem(last=False)
                self._cached -= len(old["key"])
        else:
            self._groups.move_to_end(g)
        j = i - int(self._starts[g])
        return {c: v[j] for c, v in cols.items()}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._file, self._handle, self._groups, self._cached = None, None, OrderedDict(), 0


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
    """How a stage turns stored samples into segments (from its stage.json)."""

    out: str
    sources: tuple[str, ...]
    template: str
    image_tokens: int
    image_size: int
    mean_std: MeanStd


@dataclass(frozen=True)
class Loaded:
    """A planned sample, read and encoded: its segment and its decoded images (RGB, `image_size` square)."""

    segment: Segment
    images: list[Image.Image]


class SampleReader:
    """Reads planned segments of one stage; holds open index files and shard handles, so create it per worker."""

    def __init__(self, spec: SampleSpec, tokenizer: Any) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        # The length index ran encode's whole-text check for every sample; here the planned length is the check.
        self.encode = FastEncoder(tokenizer, spec.template, spec.image_tokens)
        self.indexes = [IndexRows(fs.join(source_dir(spec.out, s), MERGED_INDEX)) for s in spec.sources]
        self.readers = [ShardReader(source_dir(spec.out, s)) for s in spec.sources]

    def segment(self, seg: np.void) -> Loaded | Skip:
        """The segment `seg` (a SEGMENT_DTYPE row of the plan) ready to pack, or a Skip saying why not."""
        source = int(seg["source"])
        row = self.indexes[source].row(int(seg["sample"]))
        key = f"{self.spec.sources[source]}/{row['key']}"
        try:
            return self._load(row, key, int(seg["tokens"]), bool(seg["truncated"]), source)
        except SAMPLE_ERRORS as e:
            return Skip(key, f"{type(e).__name__}: {e}")

    def _load(self, row: dict[str, Any], key: str, tokens: int, truncated: bool, source: int) -> Loaded:
        stored = self.readers[source].read(row)
        rec = stored["record"]
        spec = self.spec
        enc = cut(self.encode(rec["conversation"], task=rec.get("task"), key=key), tokens, truncated, key)
        images = []
        if enc.image_starts:
            if stored["image"] is None:
                raise ValueError(f"sample {key}: {len(enc.image_starts)} image span(s) but no stored image")
            if len(enc.image_starts) != 1:
                raise ValueError(f"sample {key}: {len(enc.image_starts)} image spans for one stored image")
            images.append(decode(stored["image"], spec.image_size))
        return Loaded(Segment(enc.input_ids, enc.labels, enc.image_starts), images)

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
