"""A plan segment → its index row → the sample's tokens and image → cut and checked tokens + decoded images.

Tokens come from the stage's length index (`mixer.lengths`: what `encode` gave at build time, one ranged read of the
shard's token file). Index rows are one fixed-width record of the length index's `rows.npy` (else one Parquet row
group at a time), and every cache is
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
from shards.index import MERGED_INDEX, ShardReader, member_images

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
    """How a stage turns stored samples into segments (from its `StageContract`).

    By source, in `sources` order: `shards` is the folder (or URL) of its shards and index, `lengths` the URL of
    its merged length index, whose token files (`mixer.lengths.has_tokens`) serve the build's tokens.
    """

    sources: tuple[str, ...]
    shards: tuple[str, ...]
    template: str
    image_tokens: int
    image_size: int
    mean_std: MeanStd
    lengths: tuple[str, ...]
    image_preprocess: str = "crop"  # or "pad": see mixer.loader.images
    verify: bool = True  # check the members read against the index's crc32 (a mismatch is a Skip)


@dataclass(frozen=True)
class Loaded:
    """A planned sample, read and encoded: its segment and its decoded images (RGB, `image_size` square)."""

    segment: Segment
    images: list[Image.Image]


def index_rows(shards: str, lengths: str) -> FixedRows | IndexRows:
    """A source's index rows: the fixed-width `rows.npy` beside its length index, if it has one.

    Else the source's `index.parquet` in `shards`, a row group at a time (a length index written before rows.npy).
    """
    url = rows_url(lengths.rsplit("/", 1)[0])
    if fs.exists(url):
        return FixedRows(url)
    return IndexRows(fs.join(shards, MERGED_INDEX))


class SampleReader:
    """Reads planned segments of one stage; holds open index files and shard handles, so create it per worker.

    A sample costs one ranged read of its token file and one of its images' bytes.
    """

    def __init__(self, spec: SampleSpec, tokenizer: Any, token_cache_shards: int = TOKEN_CACHE_SHARDS) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        image_id = FastEncoder(tokenizer, spec.template, spec.image_tokens).image_id
        self.readers = [ShardReader(d, verify=spec.verify) for d in spec.shards]
        self.indexes = [index_rows(d, url) for d, url in zip(spec.shards, spec.lengths, strict=True)]
        self.tokens = [
            TokenFiles(url.rsplit("/", 1)[0], image_id, spec.image_tokens, token_cache_shards) for url in spec.lengths
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
        enc = cut(self._stored(self.tokens[source], row, key, in_shard), tokens, truncated, key)
        decoded = []
        if enc.image_starts:
            images = self._images(row, source)
            # The k-th span is the k-th image; a sample cut after a turn keeps the images of the turns it keeps.
            if len(images) < len(enc.image_starts):
                raise ValueError(
                    f"sample {key}: {len(enc.image_starts)} image span(s) but {len(images)} stored image(s)"
                )
            spec = self.spec
            fill = mean_colour(spec.mean_std)
            decoded = [
                decode(data, spec.image_size, spec.image_preprocess, fill) for data in images[: len(enc.image_starts)]
            ]
        return Loaded(Segment(enc.input_ids, enc.labels, enc.image_starts), decoded)

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

    def _images(self, row: dict[str, Any], source: int) -> list[bytes]:
        """The stored images' bytes alone: in a tar, one ranged read of the image member(s), not the JSON or caption."""
        ext = row["image_ext"]
        if not ext:
            return []
        if row["row_group"] < 0:
            if row["image_offset"] < 0:
                return []
            row = {**row, "json_offset": -1, "txt_offset": -1}
        return member_images(self.readers[source].members(row), ext)

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
            t.close()
