"""`mixer ablate`: the story of one sweep — proxy length index → variants → proxy runs → report.

Each variant's proxy run is `train proxy …` in its own process: `mixer` never imports the trainer (it knows no
DeepSpeed), and a crashing variant cannot take the sweep down with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from mixer.ablate import ablation_dir
from mixer.ablate.report import write_report
from mixer.ablate.sweep import Variant, VariantResult, run_sweep
from mixer.ablate.variants import variants_for
from mixer.lengths import build_lengths
from mixer.manifest import Manifest, ModelConfig
from mixer.manifest.merge import deep_merge

DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def proxy_model(m: Manifest, name: str) -> ModelConfig:
    over = m.ablations[name].proxy.model
    return ModelConfig.model_validate(deep_merge(m.model.model_dump(exclude_none=True), over)) if over else m.model


def run_variant(manifest: str, ablation: str, sweep: str, variant: Variant) -> VariantResult:
    """Run `train proxy` for one variant and read back its result (a failure raises with the process's last words)."""
    result = Path(sweep) / "variants" / variant.name / "proxy_result.json"
    cmd = [
        sys.executable,
        "-m",
        "train.cli",
        "proxy",
        manifest,
        "--ablation",
        ablation,
        "--variant",
        variant.name,
        "--mixture",
        json.dumps(variant.mixture),
        "--result",
        str(result),
    ]
    t0 = time.perf_counter()
    # a proxy run is a world of its own: never the caller's distributed group
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RuntimeError(f"train proxy exited {proc.returncode} after {time.perf_counter() - t0:.0f} s:\n{tail}")
    return VariantResult(**json.loads(result.read_text()))


def ablate(manifest: Path, m: Manifest, name: str, parallel: int = 1, ray_address: str | None = None) -> dict:
    """Run (or resume) the sweep `name`; return the report's file paths and the results."""
    ab = m.ablations[name]
    stage = m.stage(ab.stage)
    model = proxy_model(m, name)
    n_img = model.image_tokens_for(stage.image_size)
    build_lengths(m.output, list(stage.mixture), model.tokenizer_path(), stage.template, n_img, ray_address=ray_address)
    sweep = ablation_dir(m.output, name)
    runner = partial(run_variant, str(Path(manifest).resolve()), name, str(sweep))
    results = run_sweep(name, variants_for(ab, stage.mixture, m.seed), runner, sweep, parallel=parallel)
    paths = write_report(name, results, sweep, varied=ab.grid.vary if ab.grid else None)
    return {"paths": paths, "results": results}
