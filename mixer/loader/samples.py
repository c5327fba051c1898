"""A plan segment → its index row → the sample's tokens and image → cut and checked tokens + decoded images.

Tokens come from the stage's length index when it stores them (`mixer.lengths`: what `encode` gave at build time,
one ranged read of the shard's token file), else from the stored record, tokenised again. Index rows are one
fixed-width record of the length index's `rows.npy` (else one Parquet row group at a time), and every cache is
bounded (`mixer.loader.rows`), so a loader over a LAION-size source never holds its whole index. Anything wrong with
one sample at read time — a missing shard or token file, corrupt bytes, a record that no longer encodes to its
planned length or stored tokens of another sample (a stale index) — becomes a `Skip` naming the sample; the caller
counts it and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mixer.lengths import rows_url
from mixer.loader.images import MeanStd, decode, mean_colour
from mixer.loader.pack import Segment
from mixer.loader.rows import TOKEN_CACHE_SHARDS, FixedRows, IndexRows, TokenFiles
from mixer.templates import Encoded, FastEncoder
from shards import fs
from shards.build import source_dir
from shards.index import MERGED_INDEX, ShardReader

# What can go wrong with one stored sample; anything else is a bug and propagates.
SAMPLE_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, SyntaxError, Image.DecompressionBombError)


class StaleSample(ValueError):
    """The sample no longer encodes to what the plan says: the index or the plan predates the shards or template."""


@dataclass(frozen=True)
class Skip:
    """A planned sample that could not be used, by `source/key`, and why."""

    key: str
    reason: str


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

    `lengths`, by source in `sources` order, is the URL of a merged length index with token files beside it
    (`mixer.lengths.has_tokens`): those sources serve the build's tokens. A source with None, or past the end, is
    tokenised at read time.
    """

    out: str
    sources: tuple[str, ...]
    template: str
    image_tokens: int
    image_size: int
    mean_std: MeanStd
    lengths: tuple[str | None, ...] = ()
    image_preprocess: str = "crop"  # or "pad": see mixer.loader.images


@dataclass(frozen=True)
class Loaded:
    """A planned sample, read and encoded: its segment and its decoded images (RGB, `image_size` square)."""

    segment: Segment
    images: list[Image.Image]


def index_rows(out: str, source: str, lengths: str | None) -> FixedRows | IndexRows:
    """A source's index rows: the fixed-width `rows.npy` beside its length index, if it has one.

    Else the source's `index.parquet`, a row group at a time (a length index written before rows.npy existed).
    """
    if lengths is not None:
        url = rows_url(lengths.rsplit("/", 1)[0])
        if fs.exists(url):
            return FixedRows(url)
    return IndexRows(fs.join(source_dir(out, source), MERGED_INDEX))


class SampleReader:
    """Reads planned segments of one stage; holds open index files and shard handles, so create it per worker.

    A source with stored tokens costs one ranged read of its token file and the image's byte range; one without
    reads the record too and tokenises it (`FastEncoder`: the length index ran `encode`'s whole-text check
    at build time, here the planned length is the check).
    """

    def __init__(self, spec: SampleSpec, tokenizer: Any, token_cache_shards: int = TOKEN_CACHE_SHARDS) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.encode = FastEncoder(tokenizer, spec.template, spec.image_tokens)
        self.readers = [ShardReader(source_dir(spec.out, s)) for s in spec.sources]
        urls = list(spec.lengths)[: len(spec.sources)]
        urls += [None] * (len(spec.sources) - len(urls))
        self.indexes = [index_rows(spec.out, s, url) for s, url in zip(spec.sources, urls, strict=True)]
        self.tokens = [
            None
            if url is None
            else TokenFiles(url.rsplit("/", 1)[0], self.encode.image_id, spec.image_tokens, token_cache_shards)
            for url in urls
        ]

    def segment(self, seg: np.void) -> Loaded | Skip:
        """The segment `seg` (a SEGMENT_DTYPE row of the plan) ready to pack, or a Skip saying why not."""
        source, sample = int(seg["source"]), int(seg["sample"])
        row, in_shard = self.indexes[source].row_at(sample)
        key = f"{self.spec.sources[source]}/{row['key']}"
        try:
            return self._load(row, key, in_shard, int(seg["tokens"]), bool(seg["truncated"]), source)
        except SAMPLE_ERRORS as e:
            return Skip(key, f"{type(e).__name__}: {e}")

    def _load(self, row: dict[str, Any], key: str, in_shard: int, tokens: int, truncated: bool, source: int) -> Loaded:
        stored_tokens = self.tokens[source]
        if stored_tokens is None:
            stored = self.readers[source].read(row)
            rec = stored["record"]
            enc = self.encode(rec["conversation"], task=rec.get("task"), key=key)
            image = stored["image"]
        else:
            enc = self._stored(stored_tokens, row, key, in_shard)
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
            spec = self.spec
            images.append(decode(image, spec.image_size, spec.image_preprocess, mean_colour(spec.mean_std)))
        return Loaded(Segment(enc.input_ids, enc.labels, enc.image_starts), images)

    @staticmethod
    def _stored(files: TokenFiles, row: dict[str, Any], key: str, in_shard: int) -> Encoded:
        """The build's tokens of the sample at `row` (row `in_shard` of its shard); StaleSample if another's."""
        shard = int(row["shard"])
        try:
            stored_key, enc = files.row(shard, in_shard)
        except IndexError as e:
            raise StaleSample(f"sample {key}: {e} (stale index?)") from e
        if stored_key != row["key"]:
            raise StaleSample(
                f"sample {key}: token file row {in_shard} of shard {shard} is key {stored_key!r}, the shard index's is "
                f"{row['key']!r} ({files.ldir}: stale index?)"
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
