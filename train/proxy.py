"""One ablation variant's proxy run: plan, train a proxy model from scratch, evaluate on held-out slices.

The stage is planned through the one planning entry point (`mixer.planning.plan_stage_at`) with the variant's
mixture and each source's held-out slice excluded (`held_out_rows`: the last `proxy.eval_samples` stored samples of
each source, at most a tenth of it), so every variant is scored on the same unseen samples. The plan and its
contract live in `OUT/ablations/<name>/variants/<variant>/stages/proxy/` and name the build's shards. Evaluation
gives the loss per source (`train.evaluate.held_out_loss`), exact match for VQA / OCR / chart sources
(`train.evaluate.evaluate`) and, when the manifest declares `eval:`, its benchmark scores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from mixer.ablate import ablation_dir
from mixer.ablate.results import VariantResult
from mixer.contract import StageContract
from mixer.evalset import EvalItem
from mixer.lengths import cache_key, lengths_dir, merged_url, read_lengths
from mixer.loader import StageLoader
from mixer.loader.samples import SampleSpec
from mixer.manifest import Manifest, ModelConfig, StageConfig
from mixer.manifest.merge import deep_merge
from mixer.manifest.stages import StageSize
from mixer.planning import held_out_rows, plan_stage_at
from mixer.tokenizer import load_tokenizer
from shards.index import MERGED_INDEX, ShardReader
from train.engine import init_distributed
from train.evaluate import evaluate, held_out_loss
from train.loop import run_stage
from train.model import build_vlm
from train.stagerun import StageRun

EVAL_TASKS = ("vqa", "ocr", "chart")
PROXY = "proxy"  # the proxy stage's name and folder under a variant's stages/


def proxy_model(m: Manifest, ablation: str) -> ModelConfig:
    """The manifest's model with the ablation's `proxy.model` overrides merged in."""
    over = m.ablations[ablation].proxy.model
    return ModelConfig.model_validate(deep_merge(m.model.model_dump(exclude_none=True), over)) if over else m.model


def proxy_stage(m: Manifest, ablation: str, mixture: dict[str, float]) -> StageConfig:
    """The ablated stage as a proxy trains it: the variant's mixture, `proxy.steps`, no intermediate checkpoints."""
    ab = m.ablations[ablation]
    stage = m.stage(ab.stage)
    update: dict[str, Any] = {"name": PROXY, "mixture": mixture, "size": StageSize(steps=ab.proxy.steps)}
    update["checkpoint_every"] = 0
    if ab.proxy.seq_len:
        update["seq_len"] = ab.proxy.seq_len
    return StageConfig.model_validate({**stage.model_dump(), **update})


def proxy_lengths(m: Manifest, model: ModelConfig, stage: StageConfig) -> dict[str, str]:
    """Source → the build's length index of the proxy's tokenisation (built by `build_lengths` before the sweep)."""
    key = cache_key(model.tokenizer_path(), stage.template, model.image_tokens_for(stage.image_size))
    return {s: merged_url(lengths_dir(m.output, key, s)) for s in stage.mixture}


def run_proxy(m: Manifest, ablation: str, variant: str, mixture: dict[str, float]) -> VariantResult:
    """Plan, train and evaluate one variant in this process."""
    t0 = time.perf_counter()
    ab = m.ablations[ablation]
    model_cfg = proxy_model(m, ablation)
    stage = proxy_stage(m, ablation, mixture)
    urls = proxy_lengths(m, model_cfg, stage)
    lengths = {s: read_lengths(u)[0] for s, u in urls.items()}
    heldout = {s: held_out_rows(len(lens), ab.proxy.eval_samples) for s, lens in lengths.items()}
    vdir = ablation_dir(m.output, ablation) / "variants" / variant
    summary, contract = plan_stage_at(
        m, stage, m.output, urls, folder=str(vdir / "stages" / PROXY), exclude=heldout, model=model_cfg,
        seed=ab.proxy.seed,
    )  # fmt: skip

    init_distributed()
    torch.manual_seed(ab.proxy.seed)
    tokenizer = load_tokenizer(contract.tokenizer)
    vlm = build_vlm(model_cfg, tokenizer, image_size=contract.image_size)
    loader = StageLoader(str(vdir), PROXY, num_workers=0, tokenizer=tokenizer)
    run = StageRun.resolve(
        m, 0, contract, vdir / "run", stage=stage, model=model_cfg, keep_last=1, metrics_path=vdir / "metrics.jsonl"
    )
    result = run_stage(vlm, run, loader)
    loss = held_out_loss(vlm, tokenizer, loader.spec, lengths, heldout, contract.seq_len)
    acc = held_out_accuracy(vlm, tokenizer, m, contract, loader.spec, heldout)
    return VariantResult(
        name=variant,
        mixture=mixture,
        status="ok",
        realised_shares=dict(zip(contract.sources, summary.realised_shares[stage.weight_by], strict=True)),
        eval_loss=loss,
        eval_accuracy=acc,
        scores=benchmark_scores(m, vlm, tokenizer, contract, vdir / "eval"),
        tokens_seen=int(loader.stats["tokens"]),
        wall_time_s=time.perf_counter() - t0,
        loss_curve=result.losses,
    )


def held_out_accuracy(
    vlm: Any, tokenizer: Any, m: Manifest, contract: StageContract, spec: SampleSpec, rows: dict[str, range]
) -> dict[str, float | None]:
    """Exact match per VQA / OCR / chart source on its held-out rows' first question (None for other sources)."""
    acc: dict[str, float | None] = {}
    for shards, source in zip(spec.shards, spec.sources, strict=True):
        if m.sources[source].task_tag not in EVAL_TASKS:
            acc[source] = None
            continue
        items, images = held_out_questions(shards, source, rows[source])
        scored = evaluate(
            vlm,
            tokenizer,
            items,
            template=contract.template,
            image_size=contract.image_size,
            mean_std=contract.mean_std,
            images=images,
        )
        acc[source] = scored["accuracy"]
    return acc


def held_out_questions(shards: str, source: str, rows: range) -> tuple[list[EvalItem], list[bytes]]:
    """The first question and answer of each held-out stored sample with an image, and the image bytes."""
    index = pq.read_table(f"{shards}/{MERGED_INDEX}").slice(rows.start, len(rows)).to_pylist()
    items, images = [], []
    with ShardReader(shards) as reader:
        for r in index:
            stored = reader.read(r)
            conv = stored["record"]["conversation"]
            if stored["image"] is None or len(conv) < 2:
                continue
            question = conv[0]["content"].replace("<image>", "").strip()
            task = stored["record"].get("task", "vqa")
            items.append(EvalItem(r["key"], source, task, "", question, conv[1]["content"]))
            images.append(stored["image"])
    return items, images


def benchmark_scores(m: Manifest, vlm: Any, tokenizer: Any, contract: StageContract, folder: Path) -> dict:
    """The manifest's `eval:` benchmarks on the proxy (benchmark → scores), {} without `eval:`."""
    if m.eval is None:
        return {}
    from mixer.evals import get_benchmark
    from train.evals.model import from_vlm
    from train.evals.run import run_eval
    from train.evals.stage import eval_configs

    was_training = vlm.training
    em = from_vlm(vlm, tokenizer, contract.template, contract.image_size, contract.mean_std)
    em.image_preprocess = contract.image_preprocess
    configs = eval_configs(m)
    benches = [get_benchmark(n) for n in configs]
    scores = run_eval(em, benches, next(iter(configs.values())), folder, per_benchmark=configs)
    vlm.train(was_training)
    return scores
