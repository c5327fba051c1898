"""Mixture regressions over a sweep: the mean eval loss over sources predicted from the shares, and the best mixture.

Two laws, each fitted by least squares over the variants that finished (realised shares where the runner gives
them, else the variant's mixture), chosen by name from `LAWS`:

- `linear`:    loss ≈ Σ b_i · s_i. The shares sum to 1, so no intercept: b_i is the predicted loss of source i alone.
- `loglinear`: loss ≈ a + Σ b_i · log(s_i + ε), ε keeping a share of 0 finite.

Where the variants do not pin every coefficient down (fewer variants than coefficients, or shares that move
together, as in a grid where the other sources keep their relative weights) the fit adds a small ridge on
standardised features (λ = RIDGE × the largest squared singular value): well-determined directions barely move,
and the free ones settle where the linear law says "these sources are alike" (b_i → the mean loss) and the
log-linear "these shares do not matter" (b_i → 0). Fit quality is the leave-one-out error: each variant
predicted by the law fitted to the others. The predicted-best mixture is searched inside the convex hull of the
variants' shares — the region the sweep sampled, so nothing is extrapolated — and is a prediction, not a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mixer.ablate.sweep import VariantResult

MIN_VARIANTS = 3
RIDGE = 1e-4  # ridge λ as a fraction of the largest squared singular value of the standardised features
_RANK_RTOL = 1e-3  # singular values below this fraction of the largest count as a direction the data does not fix


@dataclass(frozen=True)
class Law:
    """A regression law: features of the share matrix, whether it has its own intercept, and its formula."""

    features: Callable[[np.ndarray, float], np.ndarray]
    intercept: bool
    formula: str


LAWS: dict[str, Law] = {
    "linear": Law(lambda s, eps: s, False, "mean eval loss ≈ Σ b_i · share_i"),
    "loglinear": Law(lambda s, eps: np.log(s + eps), True, "mean eval loss ≈ a + Σ b_i · log(share_i + ε)"),
}


@dataclass
class MixtureFit:
    """A fitted law, its fit quality and the mixture it predicts best (all predictions, none measured)."""

    law: str
    formula: str
    sources: list[str]
    intercept: float
    coefs: dict[str, float]
    eps: float
    ridge: float
    n_variants: int
    r2: float | None
    loo_rmse: float
    loo_mae: float
    loo_predictions: dict[str, float]
    best_mixture: dict[str, float]
    predicted_best_loss: float

    def predict(self, mixture: dict[str, float]) -> float:
        """Predicted mean eval loss of `mixture` (shares; missing sources count as 0)."""
        s = np.array([[mixture.get(k, 0.0) for k in self.sources]])
        return float(_predict(LAWS[self.law], self.intercept, np.array(list(self.coefs.values())), s, self.eps)[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_points(
    results: Sequence[VariantResult], target: str = "loss"
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(variant names, sources, shares matrix, values) of the results a law can be fitted to.

    `target` is `loss` (the mean eval loss) or `BENCH.METRIC` (`pope.f1`: a benchmark score, negated so that the
    fit still minimises; see `VariantResult.score`).
    """
    ok = [r for r in results if r.score(target) is not None]
    sources = list(dict.fromkeys(k for r in ok for k in (r.realised_shares or r.mixture)))
    shares = np.array([[(r.realised_shares or r.mixture).get(k, 0.0) for k in sources] for r in ok], dtype=float)
    if len(ok):
        shares /= shares.sum(axis=1, keepdims=True)
    loss = np.array([r.score(target) for r in ok], dtype=float)
    return [r.name for r in ok], sources, shares.reshape(len(ok), len(sources)), loss


def fit_law(
    law: str, results: Sequence[VariantResult], *, eps: float = 1e-3, seed: int = 0, target: str = "loss"
) -> MixtureFit:
    """Fit `law` (a key of LAWS) to the finished variants' `target`; raises if fewer than MIN_VARIANTS finished."""
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; known: {', '.join(LAWS)}")
    spec = LAWS[law]
    names, sources, shares, loss = fit_points(results, target)
    if len(names) < MIN_VARIANTS:
        raise ValueError(f"a fit needs at least {MIN_VARIANTS} finished variants with a {target} (got {len(names)})")
    x = spec.features(shares, eps)
    intercept, coefs, ridge = _solve(x, loss, spec.intercept)
    fitted = _predict(spec, intercept, coefs, shares, eps)
    loo = np.empty(len(names))
    for i in range(len(names)):
        keep = np.arange(len(names)) != i
        a, b, _ = _solve(x[keep], loss[keep], spec.intercept)
        loo[i] = _predict(spec, a, b, shares[i : i + 1], eps)[0]
    total = float(((loss - loss.mean()) ** 2).sum())
    best = _search_hull(shares, lambda s: _predict(spec, intercept, coefs, s, eps), np.random.default_rng(seed))
    return MixtureFit(
        law=law,
        formula=spec.formula,
        sources=sources,
        intercept=float(intercept),
        coefs={k: float(c) for k, c in zip(sources, coefs, strict=True)},
        eps=eps,
        ridge=ridge,
        n_variants=len(names),
        r2=1.0 - float(((loss - fitted) ** 2).sum()) / total if total > 0 else None,
        loo_rmse=float(np.sqrt(((loo - loss) ** 2).mean())),
        loo_mae=float(np.abs(loo - loss).mean()),
        loo_predictions={n: float(p) for n, p in zip(names, loo, strict=True)},
        best_mixture={k: float(v) for k, v in zip(sources, best, strict=True)},
        predicted_best_loss=float(_predict(spec, intercept, coefs, best[None], eps)[0]),
    )


def fit_sweep(
    results: Sequence[VariantResult], *, eps: float = 1e-3, seed: int = 0, target: str = "loss"
) -> list[MixtureFit]:
    """Every law of LAWS fitted to the sweep's `target`, best leave-one-out error first; empty if too few finished."""
    if len(fit_points(results, target)[0]) < MIN_VARIANTS:
        return []
    fits = [fit_law(law, results, eps=eps, seed=seed, target=target) for law in LAWS]
    return sorted(fits, key=lambda f: f.loo_rmse if math.isfinite(f.loo_rmse) else math.inf)


def _predict(spec: Law, intercept: float, coefs: np.ndarray, shares: np.ndarray, eps: float) -> np.ndarray:
    return intercept + spec.features(shares, eps) @ coefs


def _solve(x: np.ndarray, y: np.ndarray, intercept: bool) -> tuple[float, np.ndarray, float]:
    """(intercept, coefficients, ridge λ used) of least squares, ridge when the data leave a direction free."""
    x_mean = x.mean(axis=0) if intercept else np.zeros(x.shape[1])
    # Without an intercept the features are shares summing to 1, so fitting y - ȳ and adding ȳ back to every
    # coefficient is the same model; it makes ridge shrink towards "all sources alike" rather than towards 0.
    y_mean = float(y.mean())
    xc, yc = x - x_mean, y - y_mean
    scale = np.linalg.norm(xc, axis=0)
    scale[scale == 0] = 1.0
    u, sv, vt = np.linalg.svd(xc / scale, full_matrices=False)
    full_rank = len(sv) == x.shape[1] and sv[-1] > _RANK_RTOL * sv[0]
    ridge = 0.0 if full_rank else RIDGE * float(sv[0] ** 2)
    beta = vt.T @ ((sv / (sv**2 + ridge)) * (u.T @ yc)) / scale if sv[0] > 0 else np.zeros(x.shape[1])
    if intercept:
        return y_mean - float(x_mean @ beta), beta, ridge
    return 0.0, beta + y_mean, ridge


def _search_hull(
    points: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """The lowest-predicted point of the convex hull of `points`, by random search that never leaves the hull.

    Candidates are the points themselves and random convex combinations of 2-4 of them (sparse ones reach the
    hull's edges, which dense combinations of many points almost never do); the best is then refined by steps
    of shrinking length towards random hull points, each step again a convex combination.
    """
    n = len(points)

    def hull_samples(count: int) -> np.ndarray:
        out = []
        for m in range(2, min(n, 4) + 1):
            picks = rng.integers(0, n, size=(count, m))
            weights = rng.dirichlet(np.ones(m), size=count)
            out.append(np.einsum("cm,cmk->ck", weights, points[picks]))
        return np.vstack(out) if out else points

    candidates = np.vstack([points, hull_samples(2048)])
    best = candidates[np.argmin(predict(candidates))]
    step = 0.5
    for _ in range(12):
        towards = hull_samples(256)
        moved = best + rng.uniform(0, step, size=(len(towards), 1)) * (towards - best)
        moved = np.vstack([best[None], moved])
        best = moved[np.argmin(predict(moved))]
        step *= 0.6
    return best / best.sum()
