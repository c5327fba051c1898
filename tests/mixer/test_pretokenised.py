"""Stored tokens: the length index keeps `encode`'s tokens in per-shard token files and the loader serves them.

The stored form round-trips `encode` over every template and the token file round-trips its records; over a real
build (five templates, images, multi-turn and truncated samples) the loader's batches from stored tokens are
torch.equal to an independent reading (webdataset + `encode`), without reading a record or calling the encoder —
also on a source of many shards read through a cache of two; token files of other samples or rows are a Skip; a
killed build resumes; the token files work on an fsspec store; the merged length index the planner reads holds no
tokens.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_encode_fast import FIXTURES, TASKS, with_chat_template
from test_loader_fixtures import IMAGE_SIZE, IMAGE_TOKENS, assert_batches_equal, built_stage, reference_batches
from test_templates import conversations

import mixer.lengths as lengths_mod
from mixer.build import source_specs
from mixer.contract import StageContract
from mixer.lengths import LENGTH_SCHEMA, cache_key, has_tokens, read_lengths, write_source_lengths
from mixer.loader import StageLoader
from mixer.loader.images import mean_std
from mixer.loader.rows import TokenFiles
from mixer.loader.samples import Loaded, SampleReader, SampleSpec, Skip
from mixer.manifest import load_manifest
from mixer.plan import SEGMENT_DTYPE, PlanReader
from mixer.planning import plan_one
from mixer.templates import TEMPLATES, Encoded, FastEncoder, TokenizationMismatch, encode, from_stored, to_stored
from mixer.templates.encode import _image_id
from mixer.templates.stored import HEADER, pack_record, pack_tokens, read_header, token_dtype, unpack_record
from mixer.tokenizer import load_tokenizer
from shards import fs as shards_fs
from shards.build import chunk_rows, source_dir
from shards.index import ShardReader, merge_index
from shards.readers import get_reader
from shards.task import process_shard

X = -100
SOURCES = ("vqa", "chat")
BUILD_TEMPLATES = ("tinygptv", "llava_v1", "minigptv2", "plain", "llama")


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return with_chat_template(load_tokenizer(str(tiny_tokenizer)))


# ---- the stored form


def test_stored_form_collapses_image_runs_and_keeps_labelled_runs():
    enc = Encoded(
        input_ids=[5, 9, 9, 9, 7, 8, 2, 6, 9, 9, 9, 3],
        labels=[X, X, X, X, 7, 8, X, 6, X, X, X, 3],
        image_starts=[1, 8],
        turn_ends=[6, 12],
    )
    ids, spans = to_stored(enc, 3)
    assert ids.dtype == spans.dtype == np.int32
    assert ids.tolist() == [5, 9, 7, 8, 2, 6, 9, 3]
    assert spans.tolist() == [4, 6, 7, 8, 11, 12]  # (start, end) over the expanded ids
    back = from_stored(ids, spans, enc.turn_ends, image_id=9, n_image_tokens=3)
    assert back.input_ids.tolist() == enc.input_ids and back.labels.tolist() == enc.labels
    assert back.image_starts == enc.image_starts and back.turn_ends == enc.turn_ends


def round_trips(tok, conv, name, n, task) -> bool:
    try:
        enc = encode(conv, tok, name, n, task=task, key="k")
    except TokenizationMismatch:
        return False
    ids, spans = to_stored(enc, n)
    assert len(ids) == len(enc.input_ids) - len(enc.image_starts) * (n - 1)
    back = from_stored(ids, spans, enc.turn_ends, _image_id(tok), n)
    got = Encoded(back.input_ids.tolist(), back.labels.tolist(), back.image_starts, back.turn_ends)
    assert got == enc, (name, task, conv)
    return True


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_round_trips(tok, name):
    assert all(round_trips(tok, conv, name, n, task) for conv in FIXTURES for n in (1, 4) for task in TASKS)


@settings(max_examples=60, deadline=None)
@given(conv=conversations(), name=st.sampled_from(sorted(TEMPLATES)), n=st.integers(1, 9), task=st.sampled_from(TASKS))
def test_random_conversations_round_trip(tok, conv, name, n, task):
    round_trips(tok, conv, name, n, task)


# ---- the token file


def records_of(data: bytes) -> list[bytes]:
    """The records of a token file, by row."""
    dtype, rows = read_header(data, "test")
    off = np.frombuffer(data, dtype="<u8", count=rows + 1, offset=HEADER.itemsize).tolist()
    return [data[off[j] : off[j + 1]] for j in range(rows)]


@pytest.mark.parametrize(("vocab", "width"), [(1000, 2), (1 << 16, 2), ((1 << 16) + 1, 4), (150_000, 4)])
def test_the_token_file_round_trips_its_records_at_the_narrowest_id_width(vocab, width):
    dtype = token_dtype(vocab)
    assert dtype.itemsize == width
    rows = [
        ("a", np.array([5, vocab - 1, 7], np.int32), np.array([1, 3], np.int32), [2, 3]),
        ("clé-2", np.zeros(0, np.int32), np.zeros(0, np.int32), []),  # a sample whose tokenisation failed
        ("c" * 7, np.arange(11, dtype=np.int32), np.array([0, 4, 6, 11], np.int32), [4, 11]),
    ]
    data = pack_tokens([pack_record(*r, dtype) for r in rows], dtype)
    assert read_header(data, "x") == (dtype, 3)
    got = [unpack_record(rec, dtype) for rec in records_of(data)]
    for (key, ids, spans, ends), (k, i, s, e) in zip(rows, got, strict=True):
        assert k == key and i.dtype == dtype and i.tolist() == ids.tolist()
        assert s.tolist() == spans.tolist() and e.tolist() == ends
    assert all(len(rec) % 4 == 0 for rec in records_of(data))
    with pytest.raises(ValueError, match="does not fit the token file's uint16"):
        pack_record("big", np.array([1 << 16], np.int32), np.zeros(0, np.int32), [], np.dtype("<u2"))
    with pytest.raises(ValueError, match="where.tokens: not a version-1 token file"):
        read_header(b"PAR1" + data[4:], "where.tokens")


# ---- a real build: five templates, each planned twice (stored tokens, and an index without them)


def strip_tokens(url: str, to) -> str:
    """A copy of a merged length index in a folder without token files and without the format mark (format 1)."""
    to.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(url).replace_schema_metadata(None), to)
    return str(to)


def write_lengths(out, template: str, tok_path: str) -> dict[str, str]:
    key = cache_key(tok_path, template, IMAGE_TOKENS)
    return {
        n: write_source_lengths(
            source_dir(str(out), n), str(out / "lengths" / key / n), tok_path, template, IMAGE_TOKENS
        )
        for n in SOURCES
    }


@pytest.fixture(scope="module")
def builds(tmp_path_factory, tiny_tokenizer):
    """The loader fixture's shards (16 samples a shard) and a stage per template."""
    base = built_stage(tmp_path_factory, tiny_tokenizer)
    out = tmp_path_factory.mktemp("pretokenised") / "out"
    shutil.copytree(base / "sources", out / "sources")
    m = load_manifest(base.parent / "manifest.yaml")
    stages = [m.stages[0].model_copy(update={"name": f"t-{t}", "template": t}) for t in BUILD_TEMPLATES]
    m = m.model_copy(update={"stages": stages})
    for i, t in enumerate(BUILD_TEMPLATES):
        plan_one(m, i, str(out), write_lengths(out, t, str(tiny_tokenizer)))
    return out


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory, tiny_tokenizer):
    """The loader fixture's corpus sharded 4 samples a shard (vqa: 12 shards, chat: 6), and stage `s`."""
    base = built_stage(tmp_path_factory, tiny_tokenizer)
    out = tmp_path_factory.mktemp("many-shards") / "out"
    m = load_manifest(base.parent / "manifest.yaml")
    m = m.model_copy(update={"shards": m.shards.model_copy(update={"samples_per_shard": 4})})
    m = m.model_copy(update={"stages": [m.stages[0].model_copy(update={"name": "s"})]})
    for spec in source_specs(m):
        src = source_dir(str(out), spec.name)
        for shard, items in chunk_rows(get_reader(spec.kind)(spec), 4):
            process_shard(items, m.shards, src, shard)
        merge_index(src)
    plan_one(m, 0, str(out), write_lengths(out, m.stages[0].template, str(tiny_tokenizer)))
    return out


def forbid_tokenising(monkeypatch) -> None:
    """From here on, reading a sample's record or tokenising it fails the test."""

    def no_record(self, row):
        raise AssertionError(f"record {row['key']} read although its tokens are stored")

    def no_encode(self, conversation, task=None, key=""):
        raise AssertionError(f"sample {key} tokenised although its tokens are stored")

    monkeypatch.setattr(ShardReader, "read", no_record)
    monkeypatch.setattr(FastEncoder, "__call__", no_encode)


@pytest.mark.parametrize("template", BUILD_TEMPLATES)
def test_stored_tokens_give_the_batches_of_read_time_tokenisation(builds, tok, tiny_tokenizer, template, monkeypatch):
    stage = f"t-{template}"
    want = reference_batches(builds, tiny_tokenizer, stage=stage, template=template)

    fast = StageLoader(str(builds), stage, tokenizer=tok, num_workers=0)
    assert all(u is not None and has_tokens(u) for u in fast.spec.lengths)
    read_ranges = []
    members = ShardReader.members

    def image_only(self, row):
        read_ranges.append((row["json_offset"], row["txt_offset"]))
        return members(self, row)

    forbid_tokenising(monkeypatch)
    monkeypatch.setattr(ShardReader, "members", image_only)
    got = list(fast)

    assert_batches_equal(got, want)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(got, want, strict=True) for k in a)
    assert fast.stats["skipped_total"] == 0
    images = sum(int(b["pixel_values"].shape[0]) for b in got)
    assert images > 0 and len(read_ranges) == images  # one image-only read per image, and nothing else
    assert set(read_ranges) == {(-1, -1)}
    segments = [s for seq in PlanReader(builds / "stages" / stage / "plan").sequences(0) for s in seq]
    # cut multi-turn samples are among those compared (`plain` drops the questions: nothing is too long there)
    assert any(s["truncated"] for s in segments) or template == "plain"


def test_a_source_of_many_shards_is_served_through_a_cache_of_two(many_shards, tok, tiny_tokenizer, monkeypatch):
    want = reference_batches(many_shards, tiny_tokenizer, stage="s")
    loads, most = [], [0]
    real_shard = TokenFiles._shard

    def counted(self, shard):
        if shard not in self._shards:
            loads.append((self.ldir.rsplit("/", 1)[-1], shard))
        t = real_shard(self, shard)
        most[0] = max(most[0], self.cached_shards)
        return t

    monkeypatch.setattr(TokenFiles, "_shard", counted)
    forbid_tokenising(monkeypatch)
    fast = StageLoader(str(many_shards), "s", tokenizer=tok, num_workers=0, token_cache_shards=2)
    got = list(fast)

    assert_batches_equal(got, want)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(got, want, strict=True) for k in a)
    assert fast.stats["skipped_total"] == 0 and fast.stats["samples"] > 40
    vqa = {s for src, s in loads if src == "vqa"}
    assert len(vqa) >= 10  # the plan reads most of vqa's 12 shards …
    assert len(loads) > len(set(loads))  # … and comes back to shards the cache of two had let go
    assert most[0] == 2


def test_the_token_file_cache_keeps_the_most_recent_shards(many_shards, tok):
    url = StageContract.read_file(str(many_shards / "stages" / "s" / "stage.json")).lengths["vqa"]
    index = pq.read_table(f"{source_dir(str(many_shards), 'vqa')}/index.parquet").to_pylist()
    files = TokenFiles(url.rsplit("/", 1)[0], _image_id(tok), IMAGE_TOKENS, cache_shards=2)
    for shard, j, cached in [(0, 1, [0]), (5, 3, [0, 5]), (0, 0, [5, 0]), (7, 2, [0, 7]), (5, 0, [7, 5])]:
        key, enc = files.row(shard, j)
        assert key == index[shard * 4 + j]["key"] and list(files._shards) == cached
    assert all(t.fd is not None for t in files._shards.values())
    files.close()
    assert files.cached_shards == 0
    with pytest.raises(ValueError, match="cache_shards must be >= 1"):
        TokenFiles(url, 0, IMAGE_TOKENS, cache_shards=0)


def test_the_build_covers_multi_turn_truncated_and_text_only_samples(builds):
    url = StageContract.read_file(str(builds / "stages" / "t-llava_v1" / "stage.json")).lengths["chat"]
    lens, (offsets, _), images = read_lengths(url)
    turns = np.diff(offsets)
    assert (turns >= 6).any() and (images == 0).any() and (images == 1).any()


# ---- stale token files, the cache bound, resuming, a store


def spec(out, lengths) -> SampleSpec:
    shards = tuple(source_dir(str(out), s) for s in SOURCES)
    return SampleSpec(SOURCES, shards, "tinygptv", IMAGE_TOKENS, IMAGE_SIZE, mean_std("siglip_vision_model"), lengths)


def segment(source: int, sample: int, tokens: int) -> np.void:
    return np.array([(source, sample, tokens, False)], dtype=SEGMENT_DTYPE)[0]


def test_token_files_of_other_samples_or_rows_are_a_stale_skip(builds, tok, tmp_path):
    urls = StageContract.read_file(str(builds / "stages" / "t-tinygptv" / "stage.json")).lengths
    table = pq.read_table(urls["vqa"])
    lens, keys = table.column("length").to_pylist(), table.column("key").to_pylist()
    ldir = tmp_path / "vqa"
    shutil.copytree(urls["vqa"].rsplit("/", 1)[0], ldir)
    data = (ldir / "00000.tokens").read_bytes()
    dtype = read_header(data, "")[0]
    recs = records_of(data)
    (ldir / "00000.tokens").write_bytes(pack_tokens([recs[1], recs[0], *recs[2:]], dtype))  # rows 0 and 1 swapped
    (ldir / "00001.tokens").write_bytes(pack_tokens(records_of((ldir / "00001.tokens").read_bytes())[:10], dtype))
    (ldir / "00002.tokens").unlink()

    reader = SampleReader(spec(builds, (str(ldir / "lengths.parquet"), urls["chat"])), tok)
    got = reader.segment(segment(0, 0, lens[0]))
    assert got == Skip(f"vqa/{keys[0]}", got.reason)
    assert got.reason.startswith("StaleSample: ") and f"row 0 of shard 0 is key {keys[1]!r}" in got.reason
    assert isinstance(reader.segment(segment(0, 5, lens[5])), Loaded)  # the other rows still serve
    got = reader.segment(segment(0, 28, lens[28]))  # shard 1's row 12
    assert got == Skip(f"vqa/{keys[28]}", got.reason)
    assert got.reason.startswith("StaleSample: ") and "00001.tokens: row 12 outside 0..9" in got.reason
    assert isinstance(reader.segment(segment(0, 25, lens[25])), Loaded)
    got = reader.segment(segment(0, 40, lens[40]))
    assert got.reason.startswith("FileNotFoundError: ") and "00002.tokens" in got.reason
    got = reader.segment(segment(1, 0, 1))  # 1 token is not chat's first sample's stored length
    assert isinstance(got, Skip) and "the plan says 1" in got.reason
    reader.close()


def test_a_killed_length_build_resumes_and_publishes_tokens_before_parts(builds, tiny_tokenizer, tmp_path, monkeypatch):
    src, tok_path = source_dir(str(builds), "vqa"), str(tiny_tokenizer)
    clean = StageContract.read_file(str(builds / "stages" / "t-llava_v1" / "stage.json")).lengths["vqa"]
    ldir = tmp_path / "vqa"
    written, put = [], shards_fs.put_bytes

    def dies_on_part_1(url, data):
        if url.endswith("00001.parquet"):
            raise OSError("killed")
        written.append(url.rsplit("/", 1)[-1])
        put(url, data)

    monkeypatch.setattr(shards_fs, "put_bytes", dies_on_part_1)
    with pytest.raises(OSError, match="killed"):
        write_source_lengths(src, str(ldir), tok_path, "llava_v1", IMAGE_TOKENS)
    assert written == ["00000.tokens", "00000.parquet", "00001.tokens"]
    assert sorted(p.name for p in ldir.iterdir()) == ["00000.parquet", "00000.tokens", "00001.tokens"]

    monkeypatch.setattr(
        shards_fs, "put_bytes", lambda url, data: written.append(url.rsplit("/", 1)[-1]) or put(url, data)
    )
    merged = write_source_lengths(src, str(ldir), tok_path, "llava_v1", IMAGE_TOKENS)
    assert written[3:] == ["00001.tokens", "00001.parquet", "00002.tokens", "00002.parquet"]  # shard 0 reused
    assert has_tokens(merged) and pq.read_table(merged).equals(pq.read_table(clean))
    for shard in range(3):
        name = f"{shard:05d}.tokens"
        assert (ldir / name).read_bytes() == (pathlib.Path(clean).parent / name).read_bytes()


def test_token_files_on_an_fsspec_store_read_as_local_ones(builds, tiny_tokenizer, tok):
    src, tok_path = source_dir(str(builds), "chat"), str(tiny_tokenizer)
    url = write_source_lengths(src, "memory://pretokenised/chat", tok_path, "tinygptv", IMAGE_TOKENS)
    local = StageContract.read_file(str(builds / "stages" / "t-tinygptv" / "stage.json")).lengths["chat"]
    assert has_tokens(url) and pq.read_table(pa.BufferReader(shards_fs.read_bytes(url))).equals(pq.read_table(local))
    remote = TokenFiles("memory://pretokenised/chat", _image_id(tok), IMAGE_TOKENS, cache_shards=1)
    near = TokenFiles(local.rsplit("/", 1)[0], _image_id(tok), IMAGE_TOKENS, cache_shards=1)
    assert remote._local_dir is None
    for shard, j in [(0, 0), (1, 7), (0, 15), (1, 2)]:  # chat: 16 + 8 rows
        (k1, a), (k2, b) = remote.row(shard, j), near.row(shard, j)
        assert k1 == k2 and a.input_ids.tolist() == b.input_ids.tolist() and a.labels.tolist() == b.labels.tolist()
        assert a.turn_ends == b.turn_ends and a.image_starts == b.image_starts
    assert remote.cached_shards == 1 and all(t.fd is None for t in remote._shards.values())
    remote.close()
    near.close()


# ---- what the planner reads, and the cache key


def test_the_merged_length_index_holds_no_tokens(builds, tmp_path):
    url = StageContract.read_file(str(builds / "stages" / "t-plain" / "stage.json")).lengths["chat"]
    pf = pq.ParquetFile(url)
    assert pf.schema_arrow.names == LENGTH_SCHEMA.names == ["key", "length", "n_images", "turn_ends", "error"]
    assert pf.num_row_groups == 2  # a row group per shard
    assert has_tokens(url)
    assert not has_tokens(strip_tokens(url, tmp_path / "v1.parquet"))
    assert not has_tokens(str(tmp_path / "missing.parquet"))
    format2 = strip_tokens(url, tmp_path / "v2.parquet")
    format2 = pq.read_table(format2).append_column(
        "input_ids", pa.array([[1]] * pf.metadata.num_rows, pa.list_(pa.int32()))
    )
    pq.write_table(format2, tmp_path / "v2.parquet")
    assert not has_tokens(str(tmp_path / "v2.parquet"))  # tokens in list columns: tokenised at read time


def test_the_cache_key_names_the_index_format(tiny_tokenizer, monkeypatch):
    now = cache_key(str(tiny_tokenizer), "plain", 8)
    monkeypatch.setattr(lengths_mod, "LENGTH_FORMAT", lengths_mod.LENGTH_FORMAT - 1)
    before = cache_key(str(tiny_tokenizer), "plain", 8)
    assert now != before and now.startswith("plain-8-") and before.startswith("plain-8-")
