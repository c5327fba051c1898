"""The manifest's `eval:` benchmarks after a training stage: one call from `train.pipeline`, on rank 0.

The model is evaluated as the stage left it (LoRA merged or not), prompted with that stage's template and image
size; answers, scores and the card go to RUN/eval/<n>-<stage>/, and one `{"stage", "step", "eval"}` line with the
scores is appended to the stage's metrics JSONL (RUN/metrics/<n>-<stage>.jsonl), beside its step lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.distributed as dist

from mixer.evals import EvalOptions, get_benchmark
from mixer.loader.images import mean_std
from mixer.manifest import Manifest
from train import report as loggers
from train.evals.model import from_vlm
from train.evals.run import EvalConfig, run_eval


def eval_configs(m: Manifest) -> dict[str, EvalConfig]:
    """Benchmark name → its `EvalConfig` from the manifest's `eval:` section (data root under `data_root`)."""
    assert m.eval is not None
    root = Path(m.data_root) / m.eval.data_root
    opts = EvalOptions(ocr_tokens=m.eval.ocr_tokens)
    return {
        name: EvalConfig(root, opts, b.limit, m.eval.batch, m.eval.max_new_tokens, b.likelihood)
        for name, b in m.eval.benchmarks.items()
    }


def after_stage(m: Manifest, model: Any, tokenizer: Any, index: int, runs: Path, step: int) -> dict | None:
    """Run the `eval:` benchmarks on `model` after stage `index`; the scores (rank 0), or None without `eval:`."""
    if m.eval is None:
        return None
    scores = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        stage = m.stages[index]
        was_training = model.training
        em = from_vlm(model, tokenizer, stage.template, stage.image_size, mean_std(m.model.vision.model_type))
        em.image_preprocess = stage.image_preprocess  # as this stage's loader fitted its images
        configs = eval_configs(m)
        name = f"{index + 1}-{stage.name}"
        first = next(iter(configs.values()))
        benches = [get_benchmark(n) for n in configs]
        scores = run_eval(em, benches, first, runs / "eval" / name, per_benchmark=configs)
        model.train(was_training)
        metrics = runs / "metrics" / f"{name}.jsonl"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        with metrics.open("a") as f:
            f.write(json.dumps({"stage": stage.name, "step": step, "eval": scores}) + "\n")
        loggers.log({"stage": stage.name, "step": step, "eval": scores})  # report_to: TensorBoard / W&B
    if dist.is_initialized():
        dist.barrier()
    return scores
