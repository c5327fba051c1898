"""`mixer ablate`: mixture variants of one stage, a resumable sweep of proxy runs, a fitted mixture law and a report.

The proxy run itself (plan → train → per-source eval) is a `RunVariant` callable given to `run_sweep`; everything
here works on its `VariantResult`s. A sweep's folder is `OUT/ablations/<name>` (see `ablation_dir`).
"""

from __future__ import annotations

from pathlib import Path

from mixer.ablate.fit import LAWS, MixtureFit, fit_law, fit_sweep
from mixer.ablate.report import write_report
from mixer.ablate.sweep import RunVariant, VariantResult, load_result, run_sweep
from mixer.ablate.variants import DECLARED, Variant, grid_variants, random_variants, variants_for


def ablation_dir(output: Path | str, name: str) -> Path:
    """The folder of sweep `name` under a build's output folder: where results and the report go."""
    return Path(output) / "ablations" / name


__all__ = [
    "DECLARED",
    "LAWS",
    "MixtureFit",
    "RunVariant",
    "Variant",
    "VariantResult",
    "ablation_dir",
    "fit_law",
    "fit_sweep",
    "grid_variants",
    "load_result",
    "random_variants",
    "run_sweep",
    "variants_for",
    "write_report",
]
