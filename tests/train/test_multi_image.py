"""Multi-image samples end to end: llava-json rows with image lists → shards → length index → plan → loader → model.

The build runs the real parts without Ray (`process_shard`, `merge_index`, `write_source_lengths`, `plan_one`, as
the loader fixtures do). Checks: the shards store `KEY.0.jpg … KEY.2.jpg` that webdataset and tarfile read; the length
index counts 3 × the image tokens; the plan places the sample whole; the stage's `max_images` leaves the 4-image
sample out and counts it; the loader emits the three images, in order, at the sample's three spans (compared with
an independent reading: webdataset's members and the reference `encode`); and the model's logits over the packed
sample equal those of the sample alone.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from mixer.batch import normalize_pixels
from mixer.build import source_specs
from mixer.inspect import stage_report
from mixer.inspect.text import mixture_lines
from mixer.lengths import cache_key, read_lengths, write_source_lengths
from mixer.loader import StageLoader
from mixer.loader.images import decode, mean_std
from mixer.loader.pack import pack_batch
from mixer.manifest import load_manifest
from mixer.plan import PlanReader
from mixer.planning import plan_one
from mixer.templates import encode
from mixer.tokenizer import load_tokenizer
from shards.build import chunk_rows, source_dir
from shards.index import merge_index
from shards.readers import get_reader
from shards.task import process_shard
from train.model import build_vlm

IMAGE_TOKENS = 4  # a 32 px image in 16 px patches, through mlp2x_gelu
SEQ_LEN = 160
# fp32 on the CPU: masked positions get exactly zero attention weight, so only summation order differs.
TOL = 1e-5
WORDS = "a the cat dog red blue small large picture shows is on in of with and what where how many color two".split()
MULTI_ROW = 5  # the 3-image row of `mix`
CAPPED_ROW = 9  # the 4-image row, over the stage's max_images

MANIFEST = """
name: multiimage
output: {out}
seed: 5
sources:
  mix: {{kind: llava-json, paths: {root}/mix.json, image_root: {root}}}
shards:
  format: {fmt}
  samples_per_shard: 8
  image: {{size: 40, resize_mode: center_crop, encode_format: jpg, encode_quality: 90}}
model:
  vision:
    config: {{model_type: siglip_vision_model, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
             num_attention_heads: 2, image_size: 32, patch_size: 16}}
  connector: {{type: mlp2x_gelu}}
  llm:
    config: {{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
             num_attention_heads: 2, num_key_value_heads: 2, vocab_size: 2000, max_position_embeddings: 256}}
  tokenizer: {tokenizer}
  image_tokens: {image_tokens}
stages:
  - name: s1
    mixture: {{mix: 1}}
    size: {{epochs: 1}}
    seq_len: {seq_len}
    window: 2
    template: llava_v1
    image_size: 32
    max_images: 3
    trains: [connector]
    optimizer: {{lr: 1.0e-3}}
    micro_batch: 2
    global_batch: 2
"""


def _jpeg(colour: tuple[int, int, int], rng: random.Random) -> bytes:
    img = Image.new("RGB", (rng.randint(44, 70), rng.randint(44, 70)), colour)
    img.paste(tuple(255 - c for c in colour), (4, 4, 20, 20))  # not uniform: a swap of two images must show
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


def _write_source(root: Path) -> None:
    """12 rows: singles, text-only ones, a 3-image row with its placeholders in two turns, and a 4-image row."""
    rng = random.Random(7)
    items: list[dict[str, Any]] = []
    for i in range(12):
        n_images = {MULTI_ROW: 3, CAPPED_ROW: 4}.get(i, 0 if i % 4 == 3 else 1)
        names = []
        for k in range(n_images):
            names.append(f"img/{i}_{k}.jpg")
            (root / names[-1]).write_bytes(_jpeg((40 + 60 * k, 200 - 50 * k, (30 * i) % 256), rng))
        if n_images == 3:  # two images asked about in the first turn, the third in the second
            turns = [
                ("human", "<image>\n<image>\nWhat differs between the two pictures?"),
                ("gpt", _words(rng, 6) + "."),
                ("human", "And this one?\n<image>"),
                ("gpt", _words(rng, 5) + "."),
            ]
        else:
            question = "\n".join(["<image>"] * n_images + [_words(rng, 5) + "?"])
            turns = [("human", question), ("gpt", _words(rng, 4) + ".")]
        item: dict[str, Any] = {"id": f"mix-{i}", "conversations": [{"from": f, "value": v} for f, v in turns]}
        if n_images == 1:
            item["image"] = names[0]  # LLaVA's single-image form
        elif n_images:
            item["image"] = names  # LLaVA-OneVision's list form
        items.append(item)
    (root / "mix.json").write_text(json.dumps(items))


def _build(base: Path, tokenizer: Path, fmt: str) -> tuple[Any, Path, dict[str, str]]:
    root, out = base / "data", base / "out"
    (root / "img").mkdir(parents=True)
    _write_source(root)
    text = MANIFEST.format(out=out, root=root, tokenizer=tokenizer, fmt=fmt, seq_len=SEQ_LEN, image_tokens=IMAGE_TOKENS)
    (base / "manifest.yaml").write_text(text)
    m = load_manifest(base / "manifest.yaml")
    key = cache_key(str(tokenizer), "llava_v1", IMAGE_TOKENS)
    lengths = {}
    for spec in source_specs(m):
        src = source_dir(str(out), spec.name)
        for shard, items in chunk_rows(get_reader(spec.kind)(spec), m.shards.samples_per_shard):
            process_shard(items, m.shards, src, shard)
        merge_index(src)
        ldir = str(out / "lengths" / key / spec.name)
        lengths[spec.name] = write_source_lengths(src, ldir, str(tokenizer), "llava_v1", IMAGE_TOKENS)
    plan_one(m, 0, str(out), lengths)
    return m, out, lengths


def _stored_images(out: Path, key: str, fmt: str) -> list[bytes]:
    """The sample's stored images read with the standard clients: webdataset for tars, pyarrow for Parquet."""
    src = Path(source_dir(str(out), "mix"))
    if fmt == "parquet":
        rows = [r for p in sorted(src.glob("0000?.parquet")) for r in pq.read_table(p).to_pylist()]
        row = next(r for r in rows if r["key"] == key)
        assert row["image"] is None
        return row["images"]
    for tar in sorted(src.glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            if s["__key__"] == key:
                assert "jpg" not in s
                return [s[f"{k}.jpg"] for k in range(3)]
    raise AssertionError(f"{key} not found")


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_multi_image_sample_through_build_plan_loader_and_model(tmp_path: Path, tiny_tokenizer: Path, fmt: str):
    m, out, lengths = _build(tmp_path, tiny_tokenizer, fmt)
    tok = load_tokenizer(str(tiny_tokenizer))
    key = f"{MULTI_ROW:010d}"
    index = pq.read_table(Path(source_dir(str(out), "mix")) / "index.parquet").to_pylist()
    row_of = {r["key"]: i for i, r in enumerate(index)}
    assert index[row_of[key]]["n_images"] == 3 and index[row_of[f"{CAPPED_ROW:010d}"]]["n_images"] == 4

    if fmt == "webdataset":  # the tar is a plain tar: `tar tf` lists the numbered members under the one key
        shard = index[row_of[key]]["shard"]
        with tarfile.open(Path(source_dir(str(out), "mix")) / f"{shard:05d}.tar") as t:
            names = [n for n in t.getnames() if n.startswith(key)]
        assert names == [f"{key}.0.jpg", f"{key}.1.jpg", f"{key}.2.jpg", f"{key}.json"]
    stored = _stored_images(out, key, fmt)
    record = json.loads(_record_json(out, key, fmt))
    assert record["images"] == [f"{out.parent}/data/img/{MULTI_ROW}_{k}.jpg" for k in range(3)]

    # The length index counts 3 × the image tokens: the reference encode of the stored record, whole.
    enc = encode(record["conversation"], tok, "llava_v1", IMAGE_TOKENS, task=record["task"])
    assert len(enc.image_starts) == 3
    image_id = tok.convert_tokens_to_ids("<image>")
    assert enc.input_ids.count(image_id) == 3 * IMAGE_TOKENS
    raw, _, n_img = read_lengths(lengths["mix"])
    assert (int(raw[row_of[key]]), int(n_img[row_of[key]])) == (len(enc.input_ids), 3)

    # The plan places the 3-image sample whole, once; the 4-image one is left out by max_images and counted.
    placed = [s for seq in PlanReader(out / "stages/s1/plan").sequences(0) for s in seq]
    multi = [s for s in placed if int(s["sample"]) == row_of[key]]
    assert len(multi) == 1 and (int(multi[0]["tokens"]), bool(multi[0]["truncated"])) == (len(enc.input_ids), False)
    assert not [s for s in placed if int(s["sample"]) == row_of[f"{CAPPED_ROW:010d}"]]
    stage = json.loads((out / "stages/s1/stage.json").read_text())
    assert (stage["max_images"], stage["over_max_images"]) == (3, {"mix": 1})
    report = stage_report(str(out / "stages/s1"), {})
    assert report["sources"]["mix"]["over_max_images"] == 1 and report["sources"]["mix"]["coverage"]["never"] == 0
    assert "over max_images" in mixture_lines(report)[0]

    # The loader emits the three images in order, each at its span: segment start + the reference image_starts.
    want = [torch.from_numpy(np.asarray(decode(b, 32)).copy()).permute(2, 0, 1) for b in stored]
    loader = StageLoader(str(out), "s1", num_workers=0, tokenizer=tok)
    found = None
    for batch in loader:
        pix = batch["pixel_values"]
        hits = [i for i in range(pix.shape[0]) if torch.equal(pix[i], want[0])]
        if hits:
            found = (batch, hits[0])
    assert found is not None
    batch, first = found
    pos = batch["image_positions"][first : first + 3]
    for k in range(3):
        assert torch.equal(batch["pixel_values"][first + k], want[k]), f"image {k} out of place"
    r = int(pos[0, 0])
    assert (pos[:, 0] == r).all()
    seg = int(batch["segment_ids"][r, int(pos[0, 1])])
    start = int((batch["segment_ids"][r] == seg).nonzero()[0])
    assert pos[:, 1].tolist() == [start + s for s in enc.image_starts]
    span = slice(start, start + len(enc.input_ids))
    assert batch["input_ids"][r, span].tolist() == enc.input_ids and batch["labels"][r, span].tolist() == enc.labels
    assert loader.stats["images"] == sum(int(n_img[int(s["sample"])]) for s in placed)

    # The model: logits over the packed sample equal the sample alone; swapping two of its images changes them.
    torch.manual_seed(0)
    vlm = build_vlm(m.model, tok, 32).eval()
    alone = pack_batch(
        [[_segment(enc)]], len(enc.input_ids), tok.pad_token_id, torch.stack(want), mean_std("siglip_vision_model")
    )
    swapped = pack_batch(
        [[_segment(enc)]],
        len(enc.input_ids),
        tok.pad_token_id,
        torch.stack([want[1], want[0], want[2]]),
        mean_std("siglip_vision_model"),
    )
    with torch.no_grad():
        packed_logits = vlm.logits(normalize_pixels(batch))[r, span]
        alone_logits = vlm.logits(normalize_pixels(alone))[0]
        swapped_logits = vlm.logits(normalize_pixels(swapped))[0]
    assert batch["input_ids"].shape[1] == SEQ_LEN and int((batch["segment_ids"][r] > 0).sum()) > len(enc.input_ids)
    torch.testing.assert_close(packed_logits, alone_logits, atol=TOL, rtol=0)
    assert (swapped_logits - alone_logits)[enc.image_starts[0] + IMAGE_TOKENS :].abs().max() > 1e-3


def _segment(enc: Any) -> Any:
    from mixer.loader.pack import Segment

    return Segment(enc.input_ids, enc.labels, enc.image_starts)


def _record_json(out: Path, key: str, fmt: str) -> str:
    src = Path(source_dir(str(out), "mix"))
    if fmt == "parquet":
        rows = [
            r for p in sorted(src.glob("0000?.parquet")) for r in pq.read_table(p, columns=["key", "json"]).to_pylist()
        ]
        return next(r["json"] for r in rows if r["key"] == key)
    for tar in sorted(src.glob("*.tar")):
        with tarfile.open(tar) as t:
            if f"{key}.json" in t.getnames():
                return t.extractfile(f"{key}.json").read().decode()
    raise AssertionError(key)


@pytest.mark.slow
def test_a_stage_with_multi_image_samples_trains(tmp_path: Path, tiny_tokenizer: Path):
    """`train` (DeepSpeed, one CPU rank) runs the multi-image stage: every planned image reaches the model."""
    from train.pipeline import train

    m, out, lengths = _build(tmp_path, tiny_tokenizer, "webdataset")
    raw, _, n_img = read_lengths(lengths["mix"])
    placed = [s for seq in PlanReader(out / "stages/s1/plan").sequences(0) for s in seq]
    report = train(m, [0], out=str(out), workers=0)  # checkpoints and export under out/run
    stats = report.stages["s1"]
    assert stats["steps"] == len(list(PlanReader(out / "stages/s1/plan").sequences(0))) // 2
    assert (
        stats["loader"]["images"] == sum(int(n_img[int(s["sample"])]) for s in placed)
        and not stats["loader"]["skipped"]
    )
    assert all(np.isfinite([stats["first_loss"], stats["last_loss"]]))
