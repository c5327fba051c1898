"""`train ablate`: the story of one sweep — proxy length index → variants → proxy runs → report.

The sweep's bookkeeping (variants, resumable runner, fitted laws, report) is `mixer.ablate`; the proxy runs are
the trainer's (`train.proxy`), so the sweep is driven from here and `mixer` never starts the trainer. Each variant
runs in this process one after another (`parallel=1`), or in a fresh spawned process of its own (`parallel=K`),
where a crash or a leaked torch state cannot touch the other variants.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from mixer.ablate import ablation_dir
from mixer.ablate.report import write_report
from mixer.ablate.results import VariantResult
from mixer.ablate.sweep import run_sweep
from mixer.ablate.variants import Variant, variants_for
from mixer.lengths import build_lengths
from mixer.manifest import Manifest, load_manifest
from train.proxy import proxy_model, run_proxy


def run_variant(manifest: str, ablation: str, load: dict[str, Any], variant: Variant) -> VariantResult:
    """One variant's proxy run; the manifest is loaded from its path, so the runner pickles for spawned workers.

    `load`: the command's `--data-root`, `--out` and `--set` (`load_manifest` keywords), applied as it applied them.
    """
    m = load_manifest(Path(manifest), check_paths=False, check_tokenizer=True, **load)
    return run_proxy(m, ablation, variant.name, dict(variant.mixture))


def ablate(
    manifest: Path,
    m: Manifest,
    name: str,
    parallel: int = 1,
    ray_address: str | None = None,
    fit_on: str = "loss",
    load: dict[str, Any] | None = None,
) -> dict:
    """Run (or resume) the sweep `name`; return the report's file paths and the results.

    `fit_on` is what the mixture laws are fitted to: `loss` (mean held-out loss) or `BENCH.METRIC` of the
    manifest's `eval:` benchmarks (`pope.f1`), maximised.
    """
    if fit_on != "loss" and (m.eval is None or fit_on.partition(".")[0] not in m.eval.benchmarks):
        declared = ", ".join(m.eval.benchmarks) if m.eval else "none"
        raise ValueError(f"--fit-on {fit_on}: not loss or BENCH.METRIC of a benchmark in eval: (declared: {declared})")
    ab = m.ablations[name]
    stage = m.stage(ab.stage)
    model = proxy_model(m, name)
    n_img = model.image_tokens_for(stage.image_size)
    build_lengths(m.output, list(stage.mixture), model.tokenizer_path(), stage.template, n_img, ray_address=ray_address)
    sweep = ablation_dir(m.output, name)
    runner = partial(run_variant, str(Path(manifest).resolve()), name, dict(load or {}))
    results = run_sweep(name, variants_for(ab, stage.mixture, m.seed), runner, sweep, parallel=parallel)
    paths = write_report(name, results, sweep, varied=ab.grid.vary if ab.grid else None, fit_on=fit_on)
    return {"paths": paths, "results": results}
