"""Scaffolding for the loader tests: a small planned build made once per session, without Ray.

Two LLaVA-format sources with local JPEGs (some text-only rows, some conversations too long for a sequence, so the
plan truncates them) go through the real pipeline: `get_reader` → `process_shard` → `merge_index` →
`write_source_lengths` → `plan_one`. `reference_batches` is an independent reading of the same plan (tars through
`webdataset`, the whole index through pyarrow) that the loader's batches are compared with.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image

from mixer.batch import IGNORE_INDEX, PackedBatch
from mixer.build import source_specs
from mixer.lengths import cache_key, write_source_lengths
from mixer.loader import StageLoader
from mixer.loader.images import decode, mean_std
from mixer.loader.pack import Segment, pack_batch
from mixer.manifest import load_manifest
from mixer.plan import PlanReader
from mixer.planning import plan_one
from mixer.templates import encode
from mixer.tokenizer import load_tokenizer
from shards.build import chunk_rows, source_dir
from shards.index import merge_index
from shards.readers import get_reader
from shards.task import process_shard

STAGE = "s1"
SEQ_LEN = 96
IMAGE_SIZE = 32
IMAGE_TOKENS = 8
WORDS = "a the cat dog red blue small large picture shows is on in of with and what where how many color two".split()

MANIFEST = """
name: loadertest
output: {out}
seed: 3
sources:
  vqa: {{kind: llava-json, paths: {root}/vqa.json, image_root: {root}}}
  chat: {{kind: llava-json, paths: {root}/chat.json, image_root: {root}}}
shards:
  format: webdataset
  samples_per_shard: 16
  image: {{size: 48, resize_mode: center_crop, encode_format: jpg, encode_quality: 90}}
model:
  vision:
    config: {{model_type: siglip_vision_model, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
             num_attention_heads: 2, image_size: 32, patch_size: 8}}
  connector: {{type: mlp2x_gelu}}
  llm:
    config: {{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
             num_attention_heads: 2, num_key_value_heads: 2, vocab_size: 2000}}
  tokenizer: {tokenizer}
  image_tokens: {image_tokens}
stages:
  - name: {stage}
    mixture: {{vqa: 2, chat: 1}}
    size: {{steps: 8}}
    seq_len: {seq_len}
    window: 8
    template: tinygptv
    image_size: {image_size}
    trains: [connector]
    optimizer: {{lr: 1.0e-3}}
    micro_batch: 2
    global_batch: 4
"""


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize()


def jpeg(rng: random.Random) -> bytes:
    w, h = rng.randint(40, 90), rng.randint(40, 90)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(4):
        x, y = rng.randrange(w), rng.randrange(h)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(w, x + 15), min(h, y + 15)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_source(root: Path, name: str, n: int, seed: int) -> None:
    """`n` LLaVA rows: every 5th text-only, every 7th a long multi-turn conversation that needs truncating."""
    rng = random.Random(seed)
    (root / name).mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        pairs = 6 if i % 7 == 3 else rng.randint(1, 2)
        turns = []
        for _ in range(pairs):
            turns.append({"from": "human", "value": sentence(rng, 3, 8) + "?"})
            turns.append({"from": "gpt", "value": sentence(rng, 2, 10 if pairs < 6 else 14) + "."})
        item: dict[str, Any] = {"id": f"{name}-{i}", "conversations": turns}
        if i % 5 != 4:
            rel = f"{name}/{i}.jpg"
            (root / rel).write_bytes(jpeg(rng))
            item["image"] = rel
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        items.append(item)
    (root / f"{name}.json").write_text(json.dumps(items))


def build(base: Path, tokenizer: Path) -> Path:
    """Write the sources and manifest under `base`, build shards, lengths and the plan; return the build folder."""
    root, out = base / "data", base / "out"
    write_source(root, "vqa", 48, 1)
    write_source(root, "chat", 24, 2)
    text = MANIFEST.format(
        out=out,
        root=root,
        tokenizer=tokenizer,
        stage=STAGE,
        seq_len=SEQ_LEN,
        image_size=IMAGE_SIZE,
        image_tokens=IMAGE_TOKENS,
    )
    (base / "manifest.yaml").write_text(text)
    m = load_manifest(base / "manifest.yaml")
    lengths = {}
    key = cache_key(str(tokenizer), "tinygptv", IMAGE_TOKENS)
    for spec in source_specs(m):
        src = source_dir(str(out), spec.name)
        shards = []
        for shard, items in chunk_rows(get_reader(spec.kind)(spec), m.shards.samples_per_shard):
            process_shard(items, m.shards, src, shard)
            shards.append(shard)
        merge_index(src)
        ldir = str(out / "lengths" / key / spec.name)
        lengths[spec.name] = write_source_lengths(src, ldir, str(tokenizer), "tinygptv", IMAGE_TOKENS)
    plan_one(m, 0, str(out), lengths)
    return out


_BUILT: dict[str, Path] = {}


def built_stage(tmp_path_factory: Any, tokenizer: Path) -> Path:
    """The session's build folder (made on first use)."""
    if "out" not in _BUILT:
        _BUILT["out"] = build(tmp_path_factory.mktemp("loader_build"), tokenizer)
    return _BUILT["out"]


# ---- an independent reading of the plan, for comparison


def plan_sequences(out: Path, stage: str = STAGE) -> list[np.ndarray]:
    return list(PlanReader(out / "stages" / stage / "plan").sequences(0))


def stored_samples(out: Path, source: str) -> tuple[list[str], dict[str, dict]]:
    """(keys by index row, key → {json, jpg}) of a source, read with `webdataset` from its tars."""
    keys = pq.read_table(source_dir(str(out), source) + "/index.parquet").column("key").to_pylist()
    samples: dict[str, dict] = {}
    for tar in sorted(Path(source_dir(str(out), source)).glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            samples[s["__key__"]] = s
    return keys, samples


def rgb_bytes(data: bytes) -> torch.Tensor:
    """Stored image bytes → the stage's uint8 [3, H, W] RGB bytes, as a batch carries them."""
    return torch.from_numpy(np.asarray(decode(data, IMAGE_SIZE)).copy()).permute(2, 0, 1).contiguous()


def reference_segment(
    seg: np.void, sources: list, tok: Any, template: str = "tinygptv"
) -> tuple[Segment, list[torch.Tensor]]:
    """One planned segment read the long way, with its images' RGB bytes."""
    keys, samples = sources[int(seg["source"])]
    s = samples[keys[int(seg["sample"])]]
    rec = json.loads(s["json"])
    enc = encode(rec["conversation"], tok, template, IMAGE_TOKENS, task=rec.get("task"))
    n = int(seg["tokens"])
    assert n in enc.turn_ends  # every planned length ends a turn (the whole sample's last one included)
    starts = [p for p in enc.image_starts if p < n]
    pixels = [rgb_bytes(s["jpg"]) for _ in starts]
    return Segment(enc.input_ids[:n], enc.labels[:n], starts), pixels


def reference_batches(
    out: Path, tokenizer: Path, rank: int = 0, world: int = 1, stage: str = STAGE, template: str = "tinygptv"
) -> list[PackedBatch]:
    """Every micro batch of `rank` in order, following the layout formula of the contract."""
    tok = load_tokenizer(str(tokenizer))
    seqs = plan_sequences(out, stage)
    sources = [stored_samples(out, name) for name in ("vqa", "chat")]
    g, m = 4, 2
    accum = g // (m * world)
    batches = []
    for step in range(len(seqs) // g):
        for a in range(accum):
            first = step * g + (a * world + rank) * m
            rows, pixels = [], []
            for i in range(first, first + m):
                done = [reference_segment(seg, sources, tok, template) for seg in seqs[i]]
                rows.append([segment for segment, _ in done])
                pixels.extend(p for _, ps in done for p in ps)
            stacked = torch.stack(pixels) if pixels else torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
            batches.append(pack_batch(rows, SEQ_LEN, tok.pad_token_id, stacked, mean_std("siglip_vision_model")))
    return batches


def assert_batches_equal(got: list[PackedBatch], want: list[PackedBatch]) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (i, k)
            assert bool((a[k] == b[k]).all()), f"micro batch {i}: {k} differs"


def labelled(batch: PackedBatch) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


# ---- reading the stage as the trainer does


def stage_loader(out: Path, tok: Any, **kw: Any) -> StageLoader:
    """The `StageLoader` of STAGE in `out` (no worker processes unless asked)."""
    kw.setdefault("num_workers", 0)
    return StageLoader(str(out), STAGE, tokenizer=tok, **kw)


def assert_resumes_mid_step(out: Path, tok: Any, reference: list[PackedBatch]) -> None:
    """Five micro batches read (step 2, micro batch 1 of 2), state saved; a new loader from it serves the rest."""
    first = stage_loader(out, tok, num_workers=2)
    it = iter(first)
    for _ in range(5):
        next(it)
    state = first.state_dict()
    assert (state["step"], state["micro"]) == (2, 1)
    del it
    again = stage_loader(out, tok, num_workers=2)
    again.load_state_dict(state)
    assert_batches_equal(list(again), reference[5:])
