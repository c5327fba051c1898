import numpy as np
import pytest

from mixer.ablate import VariantResult, fit_law, fit_sweep, grid_variants, random_variants
from mixer.ablate.fit import fit_points

EPS = 1e-3
SOURCES = ("caps", "vqa", "ocr")


def synthetic(variants, law, noise=0.002, seed=0):
    """Results whose per-source eval losses average to `law(shares)` plus Gaussian noise (a test input only)."""
    rng = np.random.default_rng(seed)
    out = []
    for v in variants:
        s = np.array([v.mixture[k] for k in SOURCES])
        mean = law(s) + rng.normal(0, noise)
        spread = np.array([0.3, -0.1, -0.2])  # sources differ, their mean is the law
        loss = {k: float(mean + d) for k, d in zip(SOURCES, spread, strict=True)}
        out.append(VariantResult(v.name, v.mixture, "ok", eval_loss=loss, tokens_seen=1000, wall_time_s=1.0))
    return out


RANDOM = random_variants({"caps": 5, "vqa": 3, "ocr": 2}, 40, 20.0, seed=1)


def test_linear_fit_recovers_the_coefficients_and_the_best_sampled_mixture():
    b = np.array([2.0, 3.0, 4.0])
    fit = fit_law("linear", synthetic(RANDOM, lambda s: s @ b))
    assert fit.ridge == 0 and fit.n_variants == 41
    assert list(fit.coefs.values()) == pytest.approx(b, abs=0.05)
    assert fit.loo_rmse < 0.004 and fit.r2 > 0.95
    # a linear law is lowest at a vertex of the hull: the sampled variant with the lowest true loss
    true_best = min(RANDOM, key=lambda v: np.array(list(v.mixture.values())) @ b)
    assert fit.best_mixture == pytest.approx(true_best.mixture, abs=0.01)
    assert fit.predicted_best_loss == pytest.approx(fit.predict(fit.best_mixture), abs=1e-12)


def test_loglinear_fit_recovers_the_coefficients_and_the_optimum_inside_the_hull():
    a, b = 2.0, np.array([-0.3, -0.2, -0.1])
    fit = fit_law("loglinear", synthetic(RANDOM, lambda s: a + b @ np.log(s + EPS)), seed=0)
    assert fit.intercept == pytest.approx(a, abs=0.05)
    assert list(fit.coefs.values()) == pytest.approx(b, abs=0.02)
    assert fit.loo_rmse < 0.004 and fit.r2 > 0.95
    # minimising a + Σ b_i log(s_i + ε) on the simplex: s_i + ε ∝ |b_i|
    optimum = np.abs(b) * (1 + len(b) * EPS) / np.abs(b).sum() - EPS
    assert list(fit.best_mixture.values()) == pytest.approx(optimum, abs=0.02)
    assert sum(fit.best_mixture.values()) == pytest.approx(1.0)


def test_unregularised_fits_equal_numpy_least_squares():
    results = synthetic(RANDOM, lambda s: 1.0 + s @ np.array([0.5, -1.0, 2.0]) + 3 * s[0] ** 2, noise=0.05)
    names, _, shares, loss = fit_points(results)
    lin = fit_law("linear", results)
    ref, *_ = np.linalg.lstsq(shares, loss, rcond=None)
    assert list(lin.coefs.values()) == pytest.approx(ref, rel=1e-8)
    log = fit_law("loglinear", results)
    design = np.column_stack([np.ones(len(names)), np.log(shares + EPS)])
    ref, *_ = np.linalg.lstsq(design, loss, rcond=None)
    assert [log.intercept, *log.coefs.values()] == pytest.approx(ref, rel=1e-8)
    # leave-one-out by hand for one variant
    keep = np.arange(len(names)) != 7
    ref7, *_ = np.linalg.lstsq(shares[keep], loss[keep], rcond=None)
    assert lin.loo_predictions[names[7]] == pytest.approx(shares[7] @ ref7, rel=1e-8)


def test_a_grid_fit_uses_ridge_and_predicts_a_best_mixture_on_the_grid_line():
    grid = grid_variants({"caps": 2, "vqa": 1, "ocr": 1}, "ocr", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    # along the line the law is lowest at ocr share 0.375 (|b_ocr| / (|b_ocr| + |b_rest|))
    results = synthetic(grid, lambda s: 2.0 - 0.3 * np.log(s[2] + EPS) - 0.5 * np.log(s[0] + s[1] + EPS), noise=0.001)
    for fit in fit_sweep(results):
        assert fit.ridge > 0  # the other sources move together: their coefficients are not identified
        best = fit.best_mixture
        assert best["caps"] / best["vqa"] == pytest.approx(2.0, rel=1e-6)  # still on the grid line
        assert 0.1 - 1e-9 <= best["ocr"] <= 0.7 + 1e-9  # within the sampled range
    loglinear = next(f for f in fit_sweep(results) if f.law == "loglinear")
    assert loglinear.best_mixture["ocr"] == pytest.approx(0.375, abs=0.01)
    # only the sum of the two co-moving sources' coefficients is identified; ridge splits it between them
    assert loglinear.coefs["ocr"] == pytest.approx(-0.3, abs=0.01)
    assert loglinear.coefs["caps"] + loglinear.coefs["vqa"] == pytest.approx(-0.5, abs=0.01)
    assert loglinear.loo_rmse < 0.003


def test_fits_use_only_finished_variants_and_need_three_of_them():
    results = synthetic(RANDOM[:3], lambda s: s.sum())
    failed = VariantResult.failed(RANDOM[3], "boom")
    diverged = VariantResult("nan", RANDOM[4].mixture, "ok", eval_loss={"caps": float("nan"), "vqa": 1.0})
    assert fit_points([*results, failed, diverged])[0] == ["declared", "random-00", "random-01"]
    assert fit_sweep([*results[:2], failed, diverged]) == []
    with pytest.raises(ValueError, match="at least 3 finished variants"):
        fit_law("linear", results[:2])
    with pytest.raises(ValueError, match="unknown law 'cubic'"):
        fit_law("cubic", results)


def test_realised_shares_are_the_regressors_when_given():
    results = synthetic(RANDOM[:5], lambda s: 1.0)
    results[1].realised_shares = {"caps": 0.2, "vqa": 0.2, "ocr": 0.6}
    assert fit_points(results)[2][1] == pytest.approx([0.2, 0.2, 0.6])


def test_fit_sweep_orders_laws_by_leave_one_out_error():
    fits = fit_sweep(synthetic(RANDOM, lambda s: 2.0 - 0.2 * np.log(s + EPS).sum()))
    assert [f.law for f in fits] == ["loglinear", "linear"]
    assert fits[0].loo_rmse < fits[1].loo_rmse


def test_a_fit_on_a_benchmark_score_maximises_it_and_skips_runs_without_it():
    b = np.array([2.0, 3.0, 4.0])
    results = []
    for r in synthetic(RANDOM, lambda s: 0 * s.sum() + 1.0, noise=0.0):  # the held-out loss says nothing here
        s = np.array([r.mixture[k] for k in SOURCES])
        r.scores = {"pope": {"f1": float(10.0 - s @ b), "split": {"random": 0.5}}}
        results.append(r)
    results[0].scores = {}  # a run whose benchmark did not run is left out of the fit
    fit = fit_law("linear", results, target="pope.f1")
    assert fit.n_variants == len(results) - 1
    assert list(fit.coefs.values()) == pytest.approx(b - 10.0, abs=1e-6)  # minimises -f1 = s·b - 10
    true_best = min(RANDOM[1:], key=lambda v: np.array(list(v.mixture.values())) @ b)
    assert fit.best_mixture == pytest.approx(true_best.mixture, abs=0.01)
    assert fit_sweep(results, target="pope.missing") == []
