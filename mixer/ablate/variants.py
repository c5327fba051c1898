"""Mixture variants of one stage for an ablation sweep: a grid over one source's share, or Dirichlet draws.

Pure functions. A variant's `mixture` maps every source of the stage to its share (the shares sum to 1); the
declared mixture is always variant 0, named `declared`, so every sweep has the baseline it is compared against.
Variant names are stable for the same inputs and safe as folder names (`[A-Za-z0-9_.-]`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the manifest package pulls in pydantic and every schema; sweep workers only need Variant
    from mixer.manifest.runtime import AblationConfig

DECLARED = "declared"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Variant:
    """One mixture to train a proxy on: a folder-safe name and source → share (sums to 1)."""

    name: str
    mixture: dict[str, float]


def normalise(mixture: dict[str, float]) -> dict[str, float]:
    """Weights → shares, in the mixture's order; raises if a weight is negative or all are zero."""
    bad = {k: w for k, w in mixture.items() if not w >= 0}
    if bad:
        raise ValueError(f"mixture weights must be >= 0; got {bad}")
    total = sum(mixture.values())
    if total <= 0:
        raise ValueError(f"mixture {mixture} has no positive weight")
    return {k: w / total for k, w in mixture.items()}


def safe_name(text: str) -> str:
    """`text` with every run of characters outside `[A-Za-z0-9_.-]` replaced by `_` (and no leading dot)."""
    return _UNSAFE.sub("_", text).lstrip(".") or "_"


def grid_variants(mixture: dict[str, float], vary: str, shares: list[float]) -> list[Variant]:
    """The declared mixture, then one variant per share of `vary`, named `<vary>-<share>` (e.g. `ocrvqa-0.05`).

    `vary` gets exactly that share; the other sources keep their relative weights, renormalised to 1 - share.
    """
    declared = normalise(mixture)
    if vary not in declared:
        raise ValueError(f"grid: source {vary!r} is not in the mixture ({', '.join(declared)})")
    rest = 1.0 - declared[vary]
    if rest <= 0:
        raise ValueError(f"grid: every other source of the mixture has weight 0, nothing to renormalise against {vary}")
    out = [Variant(DECLARED, declared)]
    for share in shares:
        if not 0 < share < 1:
            raise ValueError(f"grid: share {share} of {vary!r} must be in (0, 1)")
        varied = {k: (share if k == vary else v / rest * (1.0 - share)) for k, v in declared.items()}
        out.append(Variant(f"{safe_name(vary)}-{share:.6g}", varied))
    _check_unique(out)
    return out


def random_variants(mixture: dict[str, float], n: int, concentration: float, seed: int) -> list[Variant]:
    """The declared mixture, then `n` draws from Dirichlet(concentration × declared shares), RegMix-style.

    The draws average to the declared shares and spread less as the concentration grows. Sources declared at
    weight 0 stay at 0 (a Dirichlet needs positive parameters). Deterministic in `seed`; the draws are named
    `random-00`, `random-01`, … (zero-padded to the width of n - 1).
    """
    if n < 1:
        raise ValueError(f"random: n must be >= 1 (got {n})")
    if not concentration > 0:
        raise ValueError(f"random: concentration must be > 0 (got {concentration})")
    declared = normalise(mixture)
    live = [k for k, v in declared.items() if v > 0]
    alpha = np.array([concentration * declared[k] for k in live])
    draws = np.random.default_rng(seed).dirichlet(alpha, size=n) if len(live) > 1 else np.ones((n, 1))
    width = len(str(n - 1))
    out = [Variant(DECLARED, declared)]
    for i, row in enumerate(draws):
        drawn = dict(zip(live, (float(x) for x in row / row.sum()), strict=True))
        out.append(Variant(f"random-{i:0{width}d}", {k: drawn.get(k, 0.0) for k in declared}))
    return out


def variants_for(ablation: AblationConfig, stage_mixture: dict[str, float], seed: int) -> list[Variant]:
    """The variants of a manifest's ablation over its stage's mixture (weights, not yet normalised)."""
    if ablation.grid is not None:
        return grid_variants(stage_mixture, ablation.grid.vary, ablation.grid.shares)
    assert ablation.random is not None  # AblationConfig validates that exactly one kind is given
    return random_variants(stage_mixture, ablation.random.n, ablation.random.concentration, seed)


def _check_unique(variants: list[Variant]) -> None:
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise ValueError(f"two variants are both named {v.name!r}: give distinct shares")
        seen.add(v.name)
