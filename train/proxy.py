"""One ablation variant's proxy run: plan, train a proxy model from scratch, evaluate on held-out slices.

The stage is planned with the variant's mixture; evaluation gives the loss per source and exact match for VQA / OCR
sources.

Run by `mixer ablate` as `train proxy …`, one process per variant. The held-out slice is the last
`proxy.eval_samples` stored samples of each source (at most a tenth of it); they never enter a proxy plan, so every
variant is scored on the same unseen samples. Proxy plans live in `OUT/ablations/<name>/variants/<variant>/`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from mixer.ablate import ablation_dir
from mixer.ablate.run import proxy_model
from mixer.batch import IGNORE_INDEX, normalize_pixels
from mixer.lengths import cache_key, lengths_dir, merged_url, read_lengths
from mixer.loader import StageLoader
from mixer.loader.images import mean_std, pixel_batch, preprocess
from mixer.loader.pack import pack_batch
from mixer.loader.samples import Loaded, SampleReader, SampleSpec
from mixer.manifest import Manifest, StageConfig
from mixer.manifest.stages import StageSize
from mixer.plan import SEGMENT_DTYPE, PlanSpec, SourceInput, plan_stage
from mixer.planning import UNUSABLE, stage_meta
from mixer.tokenizer import load_tokenizer
from shards.build import source_dir
from shards.index import ShardReader
from train.engine import init_distributed
from train.evaluate import EvalItem, normalise, prompt_ids
from train.loop import run_stage
from train.model import build_vlm

EVAL_TASKS = ("vqa", "ocr", "chart")
EVAL_BATCH = 8


def proxy_stage(m: Manifest, ablation: str, mixture: dict[str, float]) -> StageConfig:
    ab = m.ablations[ablation]
    stage = m.stage(ab.stage)
    update = {"mixture": mixture, "size": StageSize(steps=ab.proxy.steps), "checkpoint_every": 0}
    if ab.proxy.seq_len:
        update["seq_len"] = ab.proxy.seq_len
    return StageConfig.model_validate({**stage.model_dump(), **update})


def held_out(n: int, eval_samples: int) -> range:
    """Rows of a source's held-out slice: its last min(eval_samples, n // 10) samples (at least one if n > 1)."""
    k = min(eval_samples, max(1, n // 10)) if n > 1 else 0
    return range(n - k, n)


def run_proxy(m: Manifest, ablation: str, variant: str, mixture: dict[str, float]) -> dict:
    """Train and evaluate one variant; return the fields of a `mixer.ablate.VariantResult`."""
    t0 = time.perf_counter()
    ab = m.ablations[ablation]
    model_cfg = proxy_model(m, ablation)
    stage = proxy_stage(m, ablation, mixture)
    n_img = model_cfg.image_tokens_for(stage.image_size)
    tokenizer = load_tokenizer(model_cfg.tokenizer_path())
    key = cache_key(model_cfg.tokenizer_path(), stage.template, n_img)
    names = list(stage.mixture)
    urls = {s: merged_url(lengths_dir(m.output, key, s)) for s in names}
    lengths = {s: read_lengths(urls[s]) for s in names}
    vdir = ablation_dir(m.output, ablation) / "variants" / variant
    (vdir / "stages").mkdir(parents=True, exist_ok=True)
    if not (vdir / "sources").exists():
        os.symlink(Path(m.output, "sources").resolve(), vdir / "sources")  # the loader reads OUT/sources

    inputs, heldout = [], {}
    for s in names:
        lens, ends, images = lengths[s]
        heldout[s] = held_out(len(lens), ab.proxy.eval_samples)
        usable = np.where(lens > 0, lens, UNUSABLE).astype(np.int32)
        usable[heldout[s].start :] = UNUSABLE
        inputs.append(SourceInput(s, stage.mixture[s], usable, ends, images, m.sources[s].max_epochs))
    spec = PlanSpec(
        seq_len=stage.seq_len,
        weight_by=stage.weight_by,
        seed=ab.proxy.seed,
        num_sequences=ab.proxy.steps * (stage.global_batch or 1),
        window=stage.window,
        packing=stage.packing,
    )
    summary = plan_stage(inputs, spec, vdir / "stages" / "proxy" / "plan")
    vision_type = model_cfg.vision.model_type
    meta = stage_meta(stage.model_copy(update={"name": "proxy"}), model_cfg, names, summary.num_sequences)
    meta["lengths"] = urls  # as for a stage plan: the loader serves the build's stored tokens
    (vdir / "stages" / "proxy" / "stage.json").write_text(json.dumps(meta, indent=2) + "\n")

    init_distributed()
    torch.manual_seed(ab.proxy.seed)
    vlm = build_vlm(model_cfg, tokenizer, image_size=stage.image_size)
    loader = StageLoader(str(vdir), "proxy", num_workers=0, tokenizer=tokenizer)
    result = run_stage(
        vlm,
        stage,
        m.deepspeed,
        loader,
        run_dir=vdir / "run",
        stage_index=0,
        steps=loader.steps,
        resume=False,
        checkpoint_every=0,
        keep_last=1,
        metrics_path=vdir / "metrics.jsonl",
    )
    sample_spec = SampleSpec(
        out=m.output,
        sources=tuple(names),
        template=stage.template,
        image_tokens=n_img,
        image_size=stage.image_size,
        mean_std=mean_std(vision_type),
    )
    loss, acc = evaluate_held_out(vlm, tokenizer, sample_spec, lengths, heldout, stage.seq_len, m)
    return {
        "name": variant,
        "mixture": mixture,
        "status": "ok",
        "realised_shares": dict(zip(names, summary.realised_shares[stage.weight_by], strict=True)),
        "eval_loss": loss,
        "eval_accuracy": acc,
        "tokens_seen": int(loader.stats["tokens"]),
        "wall_time_s": time.perf_counter() - t0,
        "loss_curve": result.losses,
    }


@torch.no_grad()
def evaluate_held_out(vlm, tokenizer, spec: SampleSpec, lengths: dict, heldout: dict, seq_len: int, m: Manifest):
    """Mean token loss per source on its held-out slice; exact-match accuracy for VQA / OCR / chart sources."""
    vlm.eval()
    reader = SampleReader(spec, tokenizer)
    loss: dict[str, float] = {}
    acc: dict[str, float | None] = {}
    try:
        for i, s in enumerate(spec.sources):
            segs = []
            for row in heldout[s]:
                n = int(lengths[s][0][row])
                if 0 < n <= seq_len:
                    seg = np.zeros((), dtype=SEGMENT_DTYPE)
                    seg["source"], seg["sample"], seg["tokens"], seg["truncated"] = i, row, n, False
                    got = reader.segment(seg)
                    if isinstance(got, Loaded):
                        segs.append(got)
            loss[s] = _mean_loss(vlm, segs, seq_len, tokenizer, spec)
            task = m.sources[s].task_tag
            acc[s] = _accuracy(vlm, tokenizer, spec, s, heldout[s]) if task in EVAL_TASKS else None
    finally:
        reader.close()
    return loss, acc


def _mean_loss(vlm, segs: list[Loaded], seq_len: int, tokenizer, spec: SampleSpec) -> float:
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for k in range(0, len(segs), EVAL_BATCH):
        chunk = segs[k : k + EVAL_BATCH]
        pixels = pixel_batch([im for x in chunk for im in x.images], spec.image_size)
        batch = normalize_pixels(pack_batch([[x.segment] for x in chunk], seq_len, pad, pixels, spec.mean_std))
        per_token = vlm.per_token_loss(batch)
        mask = batch["labels"] != IGNORE_INDEX
        total += float(per_token[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def _accuracy(vlm, tokenizer, spec: SampleSpec, source: str, rows: range) -> float:
    index = pq.read_table(f"{source_dir(spec.out, source)}/index.parquet").slice(rows.start, len(rows)).to_pylist()
    hits = []
    with ShardReader(source_dir(spec.out, source)) as reader:
        for r in index:
            stored = reader.read(r)
            conv = stored["record"]["conversation"]
            if stored["image"] is None or len(conv) < 2:
                continue
            question = conv[0]["content"].replace("<image>", "").strip()
            item = EvalItem(r["key"], source, stored["record"].get("task", "vqa"), "", question, conv[1]["content"])
            ids = torch.tensor([prompt_ids(tokenizer, spec.template, item, spec.image_tokens)])
            pixels = preprocess(stored["image"], spec.image_size, spec.mean_std)[None]
            out = vlm.generate(pixels, ids, 12)[0].tolist()
            hits.append(normalise(tokenizer.decode(out, skip_special_tokens=True)) == normalise(item.answer))
    return sum(hits) / len(hits) if hits else 0.0
