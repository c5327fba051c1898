"""Stored tokens: the length index keeps `encode`'s tokens and the loader serves them, batch for batch the same.

The stored form round-trips `encode` over every template; over a real build (five templates, images, multi-turn and
truncated samples) the loader's batches from stored tokens are torch.equal to those of a build whose length index
has no tokens (the read-time tokenisation path); a length index that does not describe the shard index is a Skip;
the row-group cache stays within its rows; planning never reads the token columns.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_encode_fast import FIXTURES, TASKS, with_chat_template
from test_loader_fixtures import IMAGE_SIZE, IMAGE_TOKENS, assert_batches_equal, built_stage
from test_templates import conversations

import mixer.lengths as lengths_mod
from mixer.lengths import LENGTH_SCHEMA, TOKEN_COLUMNS, cache_key, has_tokens, read_lengths, shard_lengths
from mixer.loader import StageLoader
from mixer.loader.images import mean_std
from mixer.loader.samples import Loaded, SampleReader, SampleSpec, Skip, TokenRows
from mixer.manifest import load_manifest
from mixer.plan import SEGMENT_DTYPE, PlanReader
from mixer.planning import plan_one
from mixer.templates import TEMPLATES, Encoded, TokenizationMismatch, encode, from_stored, to_stored
from mixer.templates.encode import _image_id
from mixer.tokenizer import load_tokenizer
from shards.build import source_dir
from shards.index import ShardReader

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


# ---- a real build: five templates, each planned twice (stored tokens, and an index without them)


def strip_tokens(url: str, to) -> str:
    """A copy of a length index without the token columns: what an index of format 1 holds."""
    table = pq.read_table(url)
    to.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.drop_columns(list(TOKEN_COLUMNS)), to)
    return str(to)


@pytest.fixture(scope="module")
def builds(tmp_path_factory, tiny_tokenizer):
    """(out, {template: stage}): the loader fixture's shards, a stage per template, and `<stage>-encode` twins."""
    base = built_stage(tmp_path_factory, tiny_tokenizer)
    out = tmp_path_factory.mktemp("pretokenised") / "out"
    shutil.copytree(base / "sources", out / "sources")
    m = load_manifest(base.parent / "manifest.yaml")
    stages = [m.stages[0].model_copy(update={"name": f"t-{t}", "template": t}) for t in BUILD_TEMPLATES]
    m = m.model_copy(update={"stages": stages})
    tok_path = str(tiny_tokenizer)
    for i, t in enumerate(BUILD_TEMPLATES):
        key = cache_key(tok_path, t, IMAGE_TOKENS)
        urls = {}
        for name in SOURCES:
            src = source_dir(str(out), name)
            shards = sorted({r for r in pq.read_table(f"{src}/index.parquet").column("shard").to_pylist()})
            table = pa.concat_tables(shard_lengths(src, s, tok_path, t, IMAGE_TOKENS) for s in shards)
            url = out / "lengths" / key / name / "lengths.parquet"
            url.parent.mkdir(parents=True)
            pq.write_table(table, url)
            urls[name] = str(url)
        plan_one(m, i, str(out), urls)
        stage = out / "stages" / f"t-{t}"
        twin = out / "stages" / f"t-{t}-encode"
        shutil.copytree(stage, twin)
        meta = json.loads((twin / "stage.json").read_text())
        meta["lengths"] = {n: strip_tokens(u, out / "lengths-v1" / t / n / "lengths.parquet") for n, u in urls.items()}
        (twin / "stage.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("template", BUILD_TEMPLATES)
def test_stored_tokens_give_the_batches_of_read_time_tokenisation(builds, tok, template, monkeypatch):
    stage = f"t-{template}"
    slow = StageLoader(str(builds), f"{stage}-encode", tokenizer=tok, num_workers=0)
    assert slow.spec.lengths == (None, None)
    want = list(slow)

    fast = StageLoader(str(builds), stage, tokenizer=tok, num_workers=0)
    assert all(u is not None and has_tokens(u) for u in fast.spec.lengths)
    read_ranges = []
    members = ShardReader.members

    def image_only(self, row):
        read_ranges.append((row["json_offset"], row["txt_offset"]))
        return members(self, row)

    def no_record(self, row):
        raise AssertionError(f"record {row['key']} read although its tokens are stored")

    monkeypatch.setattr(ShardReader, "read", no_record)
    monkeypatch.setattr(ShardReader, "members", image_only)
    got = list(fast)

    assert_batches_equal(got, want)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(got, want, strict=True) for k in a)
    assert fast.stats["skipped_total"] == slow.stats["skipped_total"] == 0
    images = sum(int(b["pixel_values"].shape[0]) for b in got)
    assert images > 0 and len(read_ranges) == images  # one image-only read per image, and nothing else
    assert set(read_ranges) == {(-1, -1)}
    segments = [s for seq in PlanReader(builds / "stages" / stage / "plan").sequences(0) for s in seq]
    # cut multi-turn samples are among those compared (`plain` drops the questions: nothing is too long there)
    assert any(s["truncated"] for s in segments) or template == "plain"


def test_the_build_covers_multi_turn_truncated_and_text_only_samples(builds):
    url = json.loads((builds / "stages" / "t-llava_v1" / "stage.json").read_text())["lengths"]["chat"]
    lens, (offsets, _), images = read_lengths(url)
    turns = np.diff(offsets)
    assert (turns >= 6).any() and (images == 0).any() and (images == 1).any()


# ---- a stale length index, a short one, and the cache bound


def spec(out, lengths) -> SampleSpec:
    return SampleSpec(str(out), SOURCES, "tinygptv", IMAGE_TOKENS, IMAGE_SIZE, mean_std("siglip_vision_model"), lengths)


def segment(source: int, sample: int, tokens: int) -> np.void:
    return np.array([(source, sample, tokens, False)], dtype=SEGMENT_DTYPE)[0]


def test_a_length_index_of_other_keys_or_rows_is_a_stale_skip(builds, tok, tmp_path):
    urls = json.loads((builds / "stages" / "t-tinygptv" / "stage.json").read_text())["lengths"]
    table = pq.read_table(urls["vqa"])
    lens = table.column("length").to_pylist()
    keys = table.column("key").to_pylist()
    swapped = table.set_column(0, "key", pa.array([keys[1], keys[0], *keys[2:]], pa.string()))
    pq.write_table(swapped, tmp_path / "swapped.parquet")
    pq.write_table(table.slice(0, 10), tmp_path / "short.parquet")

    reader = SampleReader(spec(builds, (urls["vqa"], urls["chat"])), tok)
    assert isinstance(reader.segment(segment(0, 0, lens[0])), Loaded)
    reader.close()

    reader = SampleReader(spec(builds, (str(tmp_path / "swapped.parquet"), urls["chat"])), tok)
    got = reader.segment(segment(0, 0, lens[0]))
    assert got == Skip(f"vqa/{keys[0]}", got.reason)
    assert got.reason.startswith("StaleSample: ") and f"length index row 0 is key {keys[1]!r}" in got.reason
    assert isinstance(reader.segment(segment(0, 5, lens[5])), Loaded)  # the other rows still serve
    reader.close()

    reader = SampleReader(spec(builds, (str(tmp_path / "short.parquet"), None)), tok)
    got = reader.segment(segment(0, 20, lens[20]))
    assert got == Skip(f"vqa/{keys[20]}", got.reason)
    assert got.reason.startswith("StaleSample: ") and "row 20 outside 0..9" in got.reason
    got = reader.segment(segment(1, 0, 1))  # chat is tokenised at read time: 1 token is not its length
    assert isinstance(got, Skip) and "the plan says 1" in got.reason
    reader.close()


def test_the_row_group_cache_holds_at_most_its_rows(builds, tok, tmp_path, monkeypatch):
    url = json.loads((builds / "stages" / "t-llava_v1" / "stage.json").read_text())["lengths"]["vqa"]
    pq.write_table(pq.read_table(url), tmp_path / "grouped.parquet", row_group_size=16)  # 48 rows: 3 groups
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, **kw: reads.append(i) or real(self, i, **kw))

    rows = TokenRows(str(tmp_path / "grouped.parquet"), _image_id(tok), IMAGE_TOKENS, cache_rows=32)
    order = [0, 20, 1, 40, 0, 47, 33, 21, 5]
    table = pq.read_table(url)
    keys, lens = table.column("key").to_pylist(), table.column("length").to_pylist()
    for i in order:
        key, enc = rows.row(i)
        assert key == keys[i] and len(enc.input_ids) == lens[i] and rows.cached_rows <= 32
    assert reads == [0, 1, 2, 1, 0]  # at most two groups of 16 at a time, least recently used out first
    rows.close()

    small = TokenRows(str(tmp_path / "grouped.parquet"), _image_id(tok), IMAGE_TOKENS, cache_rows=10)
    for i in order:
        small.row(i)
        assert small.cached_rows == 16  # the group just read always stays, and only it
    small.close()


def test_a_source_larger_than_the_cache_is_tokenised_at_read_time(builds, tok):
    urls = json.loads((builds / "stages" / "t-tinygptv" / "stage.json").read_text())["lengths"]
    lens = {n: pq.read_table(urls[n], columns=["length"]).column("length").to_pylist() for n in SOURCES}
    reader = SampleReader(spec(builds, (urls["vqa"], urls["chat"])), tok, token_cache_rows=30)
    assert reader.tokens[0] is None and reader.tokens[1] is not None  # vqa has 48 rows, chat 24
    for source, name in enumerate(SOURCES):
        got = reader.segment(segment(source, 3, lens[name][3]))
        assert isinstance(got, Loaded) and len(got.segment) == lens[name][3]
    reader.close()


# ---- the planner's reads and the cache key


def rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_planning_never_reads_the_token_columns(tmp_path):
    rng = np.random.default_rng(0)
    n, per = 200, 10_000  # 8 MB of incompressible tokens
    ids = [rng.integers(0, 2**31 - 1, per, dtype=np.int32) for _ in range(n)]
    table = pa.table(
        {
            "key": [f"{i:05d}" for i in range(n)],
            "length": np.full(n, per, np.int32),
            "n_images": np.zeros(n, np.int8),
            "turn_ends": [[per]] * n,
            "error": [None] * n,
            "input_ids": ids,
            "loss_spans": [[0, per]] * n,
        },
        schema=LENGTH_SCHEMA,
    )
    path = tmp_path / "lengths.parquet"
    pq.write_table(table, path, row_group_size=50)
    before = rchar()
    lens, (offsets, values), images = read_lengths(str(path))
    planned = rchar() - before
    assert lens.tolist() == [per] * n and values.tolist() == [per] * n and images.sum() == 0
    before = rchar()
    pq.read_table(path, columns=["input_ids"])
    tokens = rchar() - before
    assert tokens > 8_000_000  # the measure sees a read of the token column
    assert planned < 500_000, f"read_lengths read {planned} bytes of an {path.stat().st_size}-byte index"


def test_the_cache_key_names_the_index_format(tiny_tokenizer, monkeypatch):
    now = cache_key(str(tiny_tokenizer), "plain", 8)
    monkeypatch.setattr(lengths_mod, "LENGTH_FORMAT", lengths_mod.LENGTH_FORMAT - 1)
    before = cache_key(str(tiny_tokenizer), "plain", 8)
    assert now != before and now.startswith("plain-8-") and before.startswith("plain-8-")


def test_has_tokens_tells_the_formats_apart(builds, tmp_path):
    url = json.loads((builds / "stages" / "t-plain" / "stage.json").read_text())["lengths"]["chat"]
    assert has_tokens(url)
    assert not has_tokens(strip_tokens(url, tmp_path / "v1.parquet"))
    assert not has_tokens(str(tmp_path / "missing.parquet"))
