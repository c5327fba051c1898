"""One self-contained HTML page per build, `OUT/report.html`: everything `mixer inspect` shows, and the run's results.

Sections: build status; per stage the mixture table, plan totals, length deciles, the inspect plot and the
supervision audit; the loss curve of every stage that trained (`OUT/run/metrics/<n>-<stage>.jsonl`, what
`train launch` writes); ablation results; eval scores (`OUT/run/eval/scores.json`, what `train eval` writes).
Plots are inline base64 PNGs and the CSS is inline, so the one file can be mailed or attached to an issue.
Sections whose inputs do not exist yet (no run, no sweep, no eval) say so instead of disappearing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from mixer.inspect import DECILES, InspectError
from shards import fs

REPORT_NAME = "report.html"
STAGE_DIR = re.compile(r"^\d+-")  # RUN/eval/<n>-<stage>: a stage's eval, beside train eval's <benchmark> folders
CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px;margin:.5em 0 1em;display:block;overflow-x:auto}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}th{background:#eef}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}"
    ".flag{color:#a00;font-weight:bold}.note{color:#666}"
)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[Any]], cls: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _build(build: dict[str, Any] | None) -> str:
    if build is None:
        return "<p class='note'>no build.json (status counts unknown)</p>"
    statuses = sorted({k for s in build["sources"].values() for k in s["counts"]})
    rows = [
        [n, s["input_rows"], s["shards"], *(s["counts"].get(k, 0) for k in statuses)]
        for n, s in build["sources"].items()
    ]
    head = f"<p>manifest {_e(build['manifest'])} ({_e(build['manifest_hash'])})</p>"
    return head + _table(["source", "input rows", "shards", *statuses], rows, "build")


def _stage(name: str, st: dict[str, Any], audit: dict[str, Any] | None) -> str:
    from mixer.inspect.plots import stage_figure

    spec = st["spec"]
    out = [f"<h2 id='stage-{_e(name)}'>stage {_e(name)}</h2>"]
    out.append(
        f"<p>{st['num_sequences']:,} sequences of {spec['seq_len']} tokens in {st['num_windows']} windows, "
        f"{st['num_tokens']:,} tokens; packing efficiency {_pct(st['packing_efficiency'])}; worst windowed "
        f"deviation {st['worst_window_deviation_pp']:.2f} pp; tokenisation errors {st['tokenisation_errors']}</p>"
    )
    header = ["source", "declared", "real samples", "real tokens", "real images", "epochs", "samples", "tokens"]
    rows = [
        [n, _pct(s["declared_share"]), *(_pct(s["realised_share"][k]) for k in ("samples", "tokens", "images"))]
        + [f"{s['epochs']:.2f}", s["samples"], s["tokens"]]
        for n, s in st["sources"].items()
    ]
    out.append(
        _table(
            [*header, "truncated", "dropped"],
            [r + [st["sources"][r[0]][k] for k in ("truncated", "dropped")] for r in rows],
            "mixture",
        )
    )
    rows = [
        [n, s["tokenised"], *(s["deciles"] or ["-"] * len(DECILES)), "-" if s["mean"] is None else f"{s['mean']:.1f}"]
        + [s["over_seq_len"]]
        for n, s in st["lengths"].items()
    ]
    out.append(_table(["source", "n", *(f"p{q}" for q in DECILES), "mean", f">{spec['seq_len']}"], rows, "lengths"))
    out.append(_png(stage_figure(name, st)))
    if audit is not None:
        out.append(_audit(audit))
    return "\n".join(out)


def _audit(a: dict[str, Any]) -> str:
    share = "unknown (no token files)" if a["share"] is None else _pct(a["share"])
    out = [f"<h3>supervision audit (seq_len {a['seq_len']}, overlong {_e(a['overlong'])})</h3>"]
    out.append(f"<p>supervised share of placed tokens: {share}</p>")
    header = ["source", "tokenised", "supervised/sample p0", "p50", "p100", "supervised of kept"]
    header += ["zero supervised", "answers cut", "mismatches", "other errors", "example keys"]
    rows = []
    for n, s in a["sources"].items():
        sup = s["supervised"]
        d = sup["deciles"] if sup and sup["deciles"] else ["-"] * len(DECILES)
        finds = [s.get(k) or {"count": "-", "examples": []} for k in ("zero_supervised", "answers_cut")]
        finds += [s["mismatches"], s["other_errors"]]
        labels = ("zero", "cut", "mismatch", "error")
        keys = "; ".join(f"{lab}: {e['key']}" for lab, f in zip(labels, finds, strict=True) for e in f["examples"][:2])
        rows.append(
            [n, f"{s['tokenised']}/{s['rows']}", d[0], d[5], d[-1], _pct(sup["fraction"]) if sup else "-"]
            + [f["count"] for f in finds]
            + [keys]
        )
    out.append(_table(header, rows, "audit"))
    out += [f"<p class='flag'>FLAG: {_e(f)}</p>" for f in a["flags"]]
    return "\n".join(out)


def read_metrics(run: Path) -> dict[str, list[dict[str, Any]]]:
    """Stage label -> its metrics rows, from `RUN/metrics/<n>-<stage>.jsonl` (broken lines are skipped: a live run)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((run / "metrics").glob("*.jsonl")):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a run still writing
        rows = [r for r in rows if "loss" in r]  # eval rows (train.evals.stage) carry scores, not a loss
        if rows:
            found[path.stem] = rows
    return found


def _losses(metrics: dict[str, list[dict[str, Any]]]) -> str:
    if not metrics:
        return "<p class='note'>no training run yet (no run/metrics/*.jsonl)</p>"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), dpi=100, squeeze=False)
    rows = []
    for ax, (stage, ms) in zip(axes[0], metrics.items(), strict=True):
        ax.plot([m["step"] for m in ms], [m["loss"] for m in ms])
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        last = ms[-1]
        rows.append(
            [stage, len(ms), f"{ms[0]['loss']:.4f}", f"{last['loss']:.4f}", f"{last.get('tokens_per_s', 0):.0f}"]
        )
    fig.tight_layout()
    return _table(["stage", "steps", "first loss", "last loss", "tokens/s (last)"], rows, "losses") + _png(fig)


def _ablations(ablations: list[dict[str, Any]]) -> str:
    if not ablations:
        return "<p class='note'>no ablation results (run `mixer ablate`)</p>"
    out = []
    for ab in ablations:
        out.append(f"<h3>{_e(ab['name'])}</h3>")
        if "error" in ab:
            out.append(f"<p class='flag'>unreadable: {_e(ab['error'])}</p>")
            continue
        sources = list(dict.fromkeys(s for v in ab["variants"] for s in [*v["mixture"], *v["eval_loss"]]))
        rows = [
            [v["name"], v["status"], *(_pct(v["mixture"].get(s)) for s in sources)]
            + [f"{v['eval_loss'][s]:.4f}" if s in v["eval_loss"] else "-" for s in sources]
            for v in ab["variants"]
        ]
        header = ["variant", "status", *(f"{s} share" for s in sources), *(f"{s} loss" for s in sources)]
        out.append(_table(header, rows, "ablation"))
    return "\n".join(out)


def _flat(prefix: str, x: Any) -> list[tuple[str, Any]]:
    if isinstance(x, dict):
        return [kv for k, v in x.items() for kv in _flat(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, x)] if isinstance(x, int | float) and not isinstance(x, bool) else []


def _scores(run: Path) -> str:
    """`train eval`'s RUN/eval/scores.json, then each stage's RUN/eval/<n>-<stage>/scores.json (the manifest's eval)."""
    paths = [("run", run / "eval" / "scores.json")]
    paths += [
        (p.parent.name, p) for p in sorted((run / "eval").glob("*/scores.json")) if STAGE_DIR.match(p.parent.name)
    ]
    rows, notes = [], []
    for where, path in paths:
        if not path.is_file():
            continue
        try:
            scores = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            notes.append(f"<p class='flag'>{_e(path)}: unreadable: {_e(e)}</p>")
            continue
        rows += [[where, bench, metric, f"{v:.4f}"] for bench, s in scores.items() for metric, v in _flat("", s)]
    if not rows and not notes:
        return "<p class='note'>no eval scores (run `train eval`, or give the manifest an eval section)</p>"
    return "".join(notes) + (_table(["after", "benchmark", "metric", "value"], rows, "scores") if rows else "")


def render_html(report: dict[str, Any], run: Path | None = None) -> str:
    """The page of an `inspect_build` report; `run` is the training run folder (default OUT/run when local)."""
    out = report["build_dir"]
    run = run if run is not None else (Path(out) / "run" if "://" not in out else None)
    audits = report.get("audit", {})
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>tinymix build {_e(out)}</title>",
        f"<style>{CSS}</style></head><body><h1>tinymix build {_e(out)}</h1>",
        "<h2>build</h2>",
        _build(report["build"]),
    ]
    parts += [_stage(n, st, audits.get(n)) for n, st in report["stages"].items()]
    parts += ["<h2>training loss</h2>", _losses(read_metrics(run) if run else {})]
    parts += ["<h2>ablations</h2>", _ablations(report["ablations"])]
    parts += ["<h2>eval scores</h2>", _scores(run) if run else "<p class='note'>no run folder</p>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(report: dict[str, Any], run: Path | None = None) -> str:
    """Write `OUT/report.html` of the report; return its path."""
    path = fs.join(report["build_dir"], REPORT_NAME)
    try:
        fs.put_bytes(path, render_html(report, run).encode())
    except OSError as e:
        raise InspectError(f"{path}: cannot write the report: {e}") from None
    return path
