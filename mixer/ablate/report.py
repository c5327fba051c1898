"""The ablation report: `report.md`, a self-contained `report.html`, `results.json` and PNG plots in the sweep folder.

Everything in the table and the plots is measured by the proxy runs; the fitted law and its best mixture are
predictions and say so wherever they appear. Markdown and HTML are rendered from the same list of blocks, so the
two always hold the same content.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixer.ablate.fit import MixtureFit, fit_sweep
from mixer.ablate.sweep import VariantResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PREDICTION_NOTE = "Prediction of the fitted law, not a measurement: train this mixture to confirm it."
# ("h1" | "h2" | "p", text) | ("list", [text]) | ("table", header, rows, row id prefix) | ("img", file, alt text)
Block = tuple[Any, ...]


def write_report(
    name: str, results: Sequence[VariantResult], out_dir: Path | str, *, varied: str | None, fit_on: str = "loss"
) -> dict[str, Path]:
    """Write the report of sweep `name` into `out_dir` (the sweep folder, `OUT/ablations/<name>`).

    `varied` is the grid's varied source (its share is the x axis of every panel), None for a random sweep.
    `fit_on` is what the mixture laws are fitted to: `loss` (mean held-out loss) or `BENCH.METRIC` (a benchmark
    score of the manifest's `eval:`, maximised).
    Returns the written files by role: markdown, html, results, loss_vs_share, loss_curves and fit (when fitted).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = list(dict.fromkeys(k for r in results for k in r.mixture))
    fits = fit_sweep(results, target=fit_on)
    paths = {"results": out / "results.json", "loss_vs_share": out / "loss_vs_share.png"}
    paths["results"].write_text(json.dumps(_results_json(name, results, fits, varied, fit_on), indent=2))
    _plot_loss_vs_share(results, sources, varied).savefig(paths["loss_vs_share"], dpi=100)
    paths["loss_curves"] = out / "loss_curves.png"
    _plot_loss_curves(results).savefig(paths["loss_curves"], dpi=100)
    if fits:
        paths["fit"] = out / "fit.png"
        _plot_fit(results, fits, fit_on).savefig(paths["fit"], dpi=100)
    else:
        (out / "fit.png").unlink(missing_ok=True)  # from an earlier report of this sweep: no longer true
    pictures = [p.name for k, p in paths.items() if k != "results"]
    blocks = _blocks(name, results, sources, fits, varied, pictures, fit_on)
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text(_markdown(blocks))
    paths["html"] = out / "report.html"
    paths["html"].write_text(_html(name, blocks, out))
    return paths


def _x_share(r: VariantResult, source: str, varied: str | None) -> float:
    shares = r.realised_shares or r.mixture
    return shares.get(varied or source, 0.0)


def _results_json(
    name: str, results: Sequence[VariantResult], fits: list[MixtureFit], varied: str | None, fit_on: str
) -> dict:
    best = fits[0] if fits else None
    return {
        "name": name,
        "varied": varied,
        "fit_on": fit_on,
        "variants": [{**r.to_dict(), "mean_eval_loss": r.mean_eval_loss} for r in results],
        "fits": [f.to_dict() for f in fits],
        "prediction": None
        if best is None
        else {
            "law": best.law,
            "mixture": best.best_mixture,
            "predicted_mean_eval_loss": best.predicted_best_loss,
            "note": PREDICTION_NOTE,
        },
    }


def _blocks(
    name: str,
    results: Sequence[VariantResult],
    sources: list[str],
    fits: list[MixtureFit],
    varied: str | None,
    images: list[str],
    fit_on: str = "loss",
) -> list[Block]:
    ok = [r for r in results if r.status == "ok"]
    failed = [r for r in results if r.status == "failed"]
    wall = sum(r.wall_time_s for r in results)
    kind = f"grid over the share of {varied}" if varied else "random mixtures around the declared shares"
    blocks: list[Block] = [
        (
            "p",
            f"Sweep: {kind}. {len(results)} variants, {len(ok)} ok, {len(failed)} failed; {wall:.1f} s of proxy runs.",
        ),
        ("h2", "Results (measured)"),
        ("p", "Shares are those the plan realised (the variant's declared mixture where none were reported)."),
        ("table", *_table(results, sources), "variant-"),
    ]
    if failed:
        blocks += [("h2", "Failed variants"), ("list", [f"{r.name}: {r.error}" for r in failed])]
    trends = _trends(ok, sources, varied)
    if trends:
        blocks += [("h2", "Eval loss against share (measured)"), ("list", trends)]
    blocks.append(("h2", "Fitted mixture law (prediction)"))
    blocks += _fit_blocks(fits, ok, fit_on)
    blocks += [("h2", "Plots")] + [("img", f, f.removesuffix(".png").replace("_", " ")) for f in images]
    return [("h1", f"Ablation {name}"), *blocks]


def _table(results: Sequence[VariantResult], sources: list[str]) -> tuple[list[str], list[list[str]]]:
    acc_sources = [s for s in sources if any(r.eval_accuracy.get(s) is not None for r in results)]
    header = (
        ["variant", "status"]
        + [f"share {s}" for s in sources]
        + [f"loss {s}" for s in sources]
        + [f"acc {s}" for s in acc_sources]
        + ["mean loss", "tokens", "wall s"]
    )
    rows = []
    for r in results:
        shares = r.realised_shares or r.mixture
        acc = [r.eval_accuracy.get(s) for s in acc_sources]
        rows.append(
            [r.name, r.status]
            + [f"{shares.get(s, 0.0):.1%}" for s in sources]
            + [_num(r.eval_loss.get(s)) for s in sources]
            + ["—" if a is None else f"{a:.1%}" for a in acc]
            + [_num(r.mean_eval_loss), f"{r.tokens_seen:,}" if r.status == "ok" else "—", f"{r.wall_time_s:.1f}"]
        )
    return header, rows


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def _trends(ok: list[VariantResult], sources: list[str], varied: str | None) -> list[str]:
    """Per source, the least-squares slope of its eval loss against its share (the varied share for a grid)."""
    lines = []
    for s in sources:
        pts = [(_x_share(r, s, varied), r.eval_loss[s]) for r in ok if math.isfinite(r.eval_loss.get(s, math.nan))]
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        if len(set(xs.tolist())) < 2:
            continue
        slope = float(np.polyfit(xs, ys, 1)[0])
        lo, hi = int(np.argmin(xs)), int(np.argmax(xs))
        lines.append(
            f"{s}: eval loss {ys[lo]:.4f} at {varied or s} share {xs[lo]:.1%} → {ys[hi]:.4f} at {xs[hi]:.1%} "
            f"(slope {slope * 0.1:+.4f} per +10 points of share, {len(xs)} variants)"
        )
    return lines


def _target_label(fit_on: str) -> str:
    return "mean eval loss" if fit_on == "loss" else f"-{fit_on}"


def _fit_blocks(fits: list[MixtureFit], ok: list[VariantResult], fit_on: str = "loss") -> list[Block]:
    label = _target_label(fit_on)
    if not fits:
        return [("p", f"Not fitted: a fit needs at least 3 finished variants with a {label}.")]
    best_seen = min((r for r in ok if r.score(fit_on) is not None), key=lambda r: r.score(fit_on))
    rows = [
        [
            f.law,
            f.formula,
            "—" if f.r2 is None else f"{f.r2:.3f}",
            f"{f.loo_rmse:.4f}",
            f"{f.loo_mae:.4f}",
            "none" if f.ridge == 0 else f"{f.ridge:.3g}",
            ", ".join(f"{k} {v:+.4f}" for k, v in f.coefs.items())
            + ("" if f.law == "linear" else f"; intercept {f.intercept:+.4f}"),
        ]
        for f in fits
    ]
    best = fits[0]
    mix = ", ".join(f"{k} {v:.1%}" for k, v in best.best_mixture.items())
    return [
        (
            "p",
            f"Fitted by least squares over {best.n_variants} finished variants (ridge where the variants leave "
            f"a direction unfixed; ε = {best.eps:g}); fit quality is the leave-one-out error, each variant "
            "predicted by the law fitted to the others.",
        ),
        ("table", ["law", "formula", "R² (in sample)", "LOO RMSE", "LOO MAE", "ridge λ", "coefficients"], rows, "law-"),
        (
            "p",
            f"PREDICTION ({best.law} law, lowest leave-one-out error), searched inside the convex hull of the "
            f"variants' shares: {mix}, predicted {label} {best.predicted_best_loss:.4f} "
            f"(best measured: {best_seen.name}, {best_seen.score(fit_on):.4f}). {PREDICTION_NOTE}",
        ),
    ]


def _figure(**kwargs: Any) -> Figure:
    # Imported here: matplotlib takes a second or more to load, and sweep worker processes import this package
    # without ever plotting. Figure (not pyplot) renders through Agg with no global backend state.
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _panels(n: int) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = _figure(figsize=(4.2 * cols, 3.2 * rows))
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _plot_loss_vs_share(results: Sequence[VariantResult], sources: list[str], varied: str | None) -> Figure:
    ok = [r for r in results if r.status == "ok"]
    fig, axes = _panels(max(len(sources), 1))
    for ax, s in zip(axes, sources, strict=False):
        pts = sorted((_x_share(r, s, varied), r.eval_loss[s], r.name) for r in ok if s in r.eval_loss)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if varied else "o", color="tab:blue")
        for x, y, n in pts:
            if n == "declared":
                ax.plot([x], [y], "*", color="tab:red", markersize=12, label="declared")
        ax.set(title=f"{s}", xlabel=f"share of {varied or s}", ylabel=f"eval loss on {s}")
        ax.grid(alpha=0.3)
        if any(p[2] == "declared" for p in pts):
            ax.legend(fontsize=8)
    fig.suptitle("Eval loss per source against share (measured)")
    return fig


def _plot_loss_curves(results: Sequence[VariantResult]) -> Figure:
    fig = _figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    curves = [r for r in results if r.loss_curve]
    colors = [f"C{i % 10}" for i in range(len(curves))]
    for r, c in zip(curves, colors, strict=True):
        ax.plot(
            range(1, len(r.loss_curve) + 1), r.loss_curve, color=c, lw=2 if r.name == "declared" else 1, label=r.name
        )
    if not curves:
        ax.text(0.5, 0.5, "no loss curves recorded", ha="center", va="center", transform=ax.transAxes)
    elif len(curves) <= 12:
        ax.legend(fontsize=8, ncols=2)
    ax.set(title="Training loss per variant (measured)", xlabel="step", ylabel="training loss")
    ax.grid(alpha=0.3)
    return fig


def _plot_fit(results: Sequence[VariantResult], fits: list[MixtureFit], fit_on: str = "loss") -> Figure:
    fig, axes = _panels(len(fits))
    measured = {r.name: r.score(fit_on) for r in results if r.score(fit_on) is not None}
    for ax, f in zip(axes, fits, strict=False):
        xs = [measured[n] for n in f.loo_predictions]
        ys = list(f.loo_predictions.values())
        lo, hi = min(xs + ys), max(xs + ys)
        ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
        ax.plot(xs, ys, "o", color="tab:green")
        ax.set(title=f"{f.law}: LOO RMSE {f.loo_rmse:.4f}", xlabel=f"measured {_target_label(fit_on)}")
        ax.set(ylabel="leave-one-out prediction")
        ax.grid(alpha=0.3)
    fig.suptitle("Fit quality: each variant predicted by the law fitted to the others")
    return fig


def _markdown(blocks: list[Block]) -> str:
    out = []
    for kind, *body in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {body[0]}")
        elif kind == "p":
            out.append(body[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in body[0]))
        elif kind == "table":
            header, rows, _ = body
            cells = [header, ["---"] * len(header), *rows]
            out.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells))
        elif kind == "img":
            out.append(f"![{body[1]}]({body[0]})")
    return "\n\n".join(out) + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}"
)


def _html(name: str, blocks: list[Block], folder: Path) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>Ablation {e(name)}</title>"]
    out.append(f"<style>{_CSS}</style></head><body>")
    for kind, *body in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(body[0])}</{kind}>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in body[0]) + "</ul>")
        elif kind == "table":
            header, rows, prefix = body
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
            out += [f"<tr id='{e(prefix + r[0])}'>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((folder / body[0]).read_bytes()).decode()
            out.append(f"<img alt='{e(body[1])}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
