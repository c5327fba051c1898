"""Planned segment → sample: index rows by row group, the planned cut, stale and missing samples, both shard formats."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_loader_fixtures import (
    IMAGE_SIZE,
    IMAGE_TOKENS,
    plan_sequences,
    reference_segment,
    stored_samples,
)

from mixer.build import source_specs
from mixer.contract import StageContract
from mixer.lengths import cache_key, read_lengths, write_source_lengths
from mixer.loader.images import mean_std
from mixer.loader.samples import IndexRows, Loaded, SampleReader, SampleSpec, Skip, StaleSample, cut
from mixer.manifest import load_manifest
from mixer.plan import SEGMENT_DTYPE
from mixer.templates import Encoded
from shards.build import chunk_rows, source_dir
from shards.index import INDEX_SCHEMA, index_table, merge_index
from shards.readers import get_reader
from shards.task import process_shard

X = -100


def spec_for(out, sources=("vqa", "chat"), lengths: dict[str, str] | None = None) -> SampleSpec:
    """The stage's sample spec with the shards of `out` and the stage's length indexes (or `lengths`)."""
    lengths = lengths or StageContract.read(str(out), "s1").lengths
    return SampleSpec(
        tuple(sources),
        tuple(source_dir(str(out), s) for s in sources),
        "tinygptv",
        IMAGE_TOKENS,
        IMAGE_SIZE,
        mean_std("siglip_vision_model"),
        tuple(lengths[s] for s in sources),
    )


def seg(source: int, sample: int, tokens: int, truncated: bool = False) -> np.void:
    return np.array([(source, sample, tokens, truncated)], dtype=SEGMENT_DTYPE)[0]


# ---- index rows


def write_index(path, groups: list[int]) -> list[dict]:
    rows, k = [], 0
    with pq.ParquetWriter(path, INDEX_SCHEMA) as w:
        for shard, n in enumerate(groups):
            part = [
                {
                    "key": f"{k + i:010d}",
                    "row": k + i,
                    "shard": shard,
                    "source": "s",
                    "n_images": 0,
                    "text_chars": i,
                    "image_ext": None,
                    "json_offset": 512 * i,
                    "json_size": 10 + i,
                    "txt_offset": -1,
                    "txt_size": -1,
                }
                for i in range(n)
            ]
            k += n
            rows.extend(part)
            table = index_table(part)
            w.write_table(table, row_group_size=max(1, n))
    return rows


def test_index_rows_read_one_row_group_at_a_time(tmp_path, monkeypatch):
    rows = write_index(tmp_path / "index.parquet", [5, 0, 7, 3])
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, **kw: reads.append(i) or real(self, i, **kw))

    index = IndexRows(str(tmp_path / "index.parquet"), cache_rows=7)
    assert len(index) == 15 and reads == []
    for i, want in enumerate(rows):
        got = index.row(i)
        assert got["key"] == want["key"] and got["json_offset"] == want["json_offset"]
        assert got["shard"] == want["shard"] and got["row_group"] == -1 and got["image_ext"] is None
    assert reads == [0, 2, 3]  # each group once, the empty one never
    index.row(13)
    assert reads == [0, 2, 3]  # cached
    index.row(1)  # group 0 was evicted: 7 rows cached at most (group 2 + group 3 > 7 evicts all but the last)
    assert reads == [0, 2, 3, 0]
    with pytest.raises(IndexError, match=r"index.parquet: row 15 outside 0..14"):
        index.row(15)
    index.close()


def test_fixed_rows_give_the_index_rows_locally_and_behind_a_url(tmp_path):
    import fsspec

    from mixer.lengths import write_rows
    from mixer.loader.rows import FixedRows

    src = tmp_path / "src"
    src.mkdir()
    write_index(src / "index.parquet", [5, 0, 7, 3])  # shard 1 empty
    # batches of 4 rows: shard 0 and shard 2 straddle batches, so in_shard is carried across them
    assert write_rows(str(src), str(tmp_path / "rows.npy"), batch_rows=4) == 15
    parquet = IndexRows(str(src / "index.parquet"))
    fsspec.filesystem("memory").pipe("/rows/rows.npy", (tmp_path / "rows.npy").read_bytes())
    for fixed in (FixedRows(str(tmp_path / "rows.npy")), FixedRows("memory://rows/rows.npy")):
        assert len(fixed) == 15
        for i in range(15):
            want, in_shard = parquet.row_at(i)
            got, got_in_shard = fixed.row_at(i)
            assert {k: got[k] for k in want} == want and got_in_shard == in_shard == got["in_shard"], i
        with pytest.raises(IndexError, match=r"rows.npy: row 15 outside 0..14"):
            fixed.row(15)


# ---- the planned cut


ENC = Encoded(input_ids=list(range(10)), labels=[X, X, 2, 3, X, X, X, 7, 8, 9], image_starts=[0, 5], turn_ends=[4, 10])


def test_cut_keeps_whole_samples_and_cuts_at_turn_ends():
    assert cut(ENC, 10, False, "k") is ENC
    short = cut(ENC, 4, True, "k")
    assert short == Encoded([0, 1, 2, 3], [X, X, 2, 3], [0], [4])


@pytest.mark.parametrize(
    "tokens,truncated,message",
    [
        (9, False, "encodes to 10 tokens, the plan says 9"),
        (5, True, "planned cut at 5 is not a turn end"),
        (10, True, "planned cut at 10 is not a turn end"),
    ],
)
def test_cut_rejects_what_the_plan_did_not_say(tokens, truncated, message):
    with pytest.raises(StaleSample, match=message):
        cut(ENC, tokens, truncated, "src/k")


# ---- samples from the build


def test_planned_segments_equal_an_independent_reading(out, tok):
    reader = SampleReader(spec_for(out), tok)
    sources = [stored_samples(out, name) for name in ("vqa", "chat")]
    n_truncated = n_images = 0
    for sequence in plan_sequences(out)[:12]:
        for s in sequence:
            got, (want, pixels) = reader.segment(s), reference_segment(s, sources, tok)
            assert isinstance(got, Loaded)
            assert list(got.segment.input_ids) == list(want.input_ids)
            assert list(got.segment.labels) == list(want.labels)
            assert list(got.segment.image_starts) == list(want.image_starts)
            assert len(got.images) == len(pixels)
            assert all(
                torch.equal(torch.from_numpy(np.asarray(a).copy()).permute(2, 0, 1), b)
                and a.size == (IMAGE_SIZE, IMAGE_SIZE)
                for a, b in zip(got.images, pixels, strict=True)
            )
            assert len(got.segment) == s["tokens"]
            n_truncated += bool(s["truncated"])
            n_images += len(got.images)
    reader.close()
    assert n_truncated > 0 and n_images > 0  # the fixture exercises cuts and images


def test_stale_lengths_and_missing_shards_are_skips(out, tok, tmp_path):
    reader = SampleReader(spec_for(out), tok)
    first = plan_sequences(out)[0][0]
    ok = reader.segment(first)
    assert isinstance(ok, Loaded)
    key = f"{['vqa', 'chat'][first['source']]}/"
    stale = reader.segment(seg(first["source"], first["sample"], len(ok.segment) + 1))
    assert isinstance(stale, Skip) and stale.key.startswith(key)
    assert stale.reason.startswith("StaleSample: ") and f"the plan says {len(ok.segment) + 1}" in stale.reason
    reader.close()

    copy = tmp_path / "out"
    shutil.copytree(out / "sources", copy / "sources")
    (copy / "sources" / "chat" / "00001.tar").unlink()
    lengths = StageContract.read(str(out), "s1").lengths
    reader = SampleReader(spec_for(copy, lengths=lengths), tok)
    keys = pq.read_table(copy / "sources" / "chat" / "index.parquet").to_pylist()
    chat = read_lengths(lengths["chat"])[0]
    in_shard_1 = next(i for i, r in enumerate(keys) if r["shard"] == 1 and r["image_offset"] >= 0)
    missing = reader.segment(seg(1, in_shard_1, int(chat[in_shard_1])))  # its tokens are stored, its image is gone
    assert missing == Skip(f"chat/{keys[in_shard_1]['key']}", missing.reason)
    assert missing.reason.startswith("FileNotFoundError") and "00001.tar" in missing.reason
    reader.close()


def test_parquet_shards_give_the_same_segments(out, tok, tmp_path, tiny_tokenizer):
    base = out.parent
    m = load_manifest(base / "manifest.yaml")
    opts = m.shards.model_copy(update={"format": "parquet"})
    spec = next(s for s in source_specs(m) if s.name == "chat")
    pq_out = tmp_path / "pq"
    for shard, items in chunk_rows(get_reader(spec.kind)(spec), opts.samples_per_shard):
        process_shard(items, opts, source_dir(str(pq_out), "chat"), shard)
    merge_index(source_dir(str(pq_out), "chat"))
    assert json.loads((pq_out / "sources" / "chat" / "00000_stats.json").read_text())["counts"]

    tar_reader = SampleReader(spec_for(out, ("chat",)), tok)
    key = cache_key(str(tiny_tokenizer), "tinygptv", IMAGE_TOKENS)
    pq_lengths = write_source_lengths(
        source_dir(str(pq_out), "chat"),
        str(pq_out / "lengths" / key / "chat"),
        str(tiny_tokenizer),
        "tinygptv",
        IMAGE_TOKENS,
    )
    pq_reader = SampleReader(spec_for(pq_out, ("chat",), {"chat": pq_lengths}), tok)
    n = len(IndexRows(str(pq_out / "sources" / "chat" / "index.parquet")))
    assert n == 24
    stage = StageContract.read(str(out), "s1").model_dump()
    lengths = read_lengths(stage["lengths"]["chat"])[0]  # rows align with the index: the build's own token counts
    for i, tokens in enumerate(lengths.tolist()):
        a, b = tar_reader.segment(seg(0, i, tokens)), pq_reader.segment(seg(0, i, tokens))
        assert isinstance(a, Loaded) and isinstance(b, Loaded)
        assert a.segment.input_ids.tolist() == b.segment.input_ids.tolist()
        assert a.segment.labels.tolist() == b.segment.labels.tolist()
        assert a.segment.image_starts == b.segment.image_starts
        assert [x.tobytes() for x in a.images] == [y.tobytes() for y in b.images]
    tar_reader.close()
    pq_reader.close()


def test_a_built_length_index_is_memory_mapped_for_planning_and_equals_its_parquet(out):
    from mixer.planning import UNUSABLE, UsableLengths

    stage = StageContract.read(str(out), "s1").model_dump()
    for url in stage["lengths"].values():
        lens, (offsets, values), images = read_lengths(url)
        assert all(isinstance(a, np.memmap) for a in (lens, offsets, values, images))
        table = pq.read_table(url)
        assert lens.tolist() == table.column("length").to_pylist()
        assert images.tolist() == table.column("n_images").to_pylist()
        ends = table.column("turn_ends").to_pylist()
        assert [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(lens))] == ends
        # the planner's view: a failed tokenisation (0) reads as UNUSABLE, rows as read, without a copy
        view = UsableLengths(lens)
        assert len(view) == len(lens) and view[np.arange(len(lens))].tolist() == [x or UNUSABLE for x in lens.tolist()]
        assert view.usable_tokens(chunk=5) == int(lens.sum())
        # and the loader's fixed-width index rows sit beside it, row for row with index.parquet
        rows = np.load(url.rsplit("/", 1)[0] + "/rows.npy")
        assert len(rows) == len(lens)
