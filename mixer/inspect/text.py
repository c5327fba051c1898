"""The human summary of `inspect_build`'s dict as plain text.

Build status, then per stage the mixture table, plan totals, placements per sample (with a warning where they depart
from the epochs), tokenisation errors and compact length distributions (deciles and a one-line histogram), then
ablation results.
"""

from __future__ import annotations

from typing import Any

from mixer.inspect import DECILES
from mixer.inspect.audit import audit_lines

BARS = " ▁▂▃▄▅▆▇█"  # sparkline levels: a blank is an empty bin, the tallest bin is a full block
STATUS_ORDER = ("success", "failed_to_download", "failed_to_read", "failed_to_process")


def table(header: list[str], rows: list[list[Any]], indent: str = "  ") -> list[str]:
    """Aligned plain-text columns: the first left-aligned, the others right-aligned."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return [
        indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]


def sparkline(counts: list[int]) -> str:
    """One character per bin, its height proportional to the bin's count (any non-empty bin shows at least ▁)."""
    top = max(counts, default=0)
    if not top:
        return " " * len(counts)
    return "".join(BARS[0] if not c else BARS[max(1, round(c / top * (len(BARS) - 1)))] for c in counts)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def build_lines(build: dict[str, Any] | None) -> list[str]:
    if build is None:
        return ["build: no build.json (status counts unknown)"]
    took = "" if build["seconds"] is None else f", built in {build['seconds']:.1f} s"
    lines = [f"build: manifest {build['manifest']} ({build['manifest_hash']}){took}"]
    seen = {k for s in build["sources"].values() for k in s["counts"]}
    statuses = [k for k in STATUS_ORDER if k in seen] + sorted(seen - set(STATUS_ORDER))
    rows = [
        [name, s["input_rows"], s["shards"], *(s["counts"].get(k, 0) for k in statuses)]
        for name, s in build["sources"].items()
    ]
    return lines + table(["source", "input rows", "shards", *statuses], rows)


def mixture_lines(st: dict[str, Any]) -> list[str]:
    header = ["source", "declared", "real samples", "real tokens", "real images", "epochs", "samples", "tokens"]
    header += ["truncated", "dropped"]
    rows = []
    for name, s in st["sources"].items():
        real = s["realised_share"]
        rows.append(
            [name, pct(s["declared_share"]), pct(real["samples"]), pct(real["tokens"]), pct(real["images"])]
            + [f"{s['epochs']:.2f}", f"{s['samples']:,}", f"{s['tokens']:,}", s["truncated"], s["dropped"]]
        )
    return table(header, rows)


def coverage_lines(st: dict[str, Any]) -> list[str]:
    """Placements per usable sample by source (min / median / max, never placed), then a line per warning."""
    lines = ["  placements per usable sample (each epoch places every sample once):"]
    rows, warnings = [], []
    for name, s in st["sources"].items():
        c = s["coverage"]
        dist = "-" if c["min"] is None else f"{c['min']} / {c['median']:g} / {c['max']}"
        epochs = f"{c['placements'] / c['usable']:.2f}" if c["usable"] else "-"
        rows.append([name, f"{c['usable']:,}", epochs, dist, f"{c['never']:,}"])
        if c["warning"]:
            warnings.append(f"  warning: {name}: {c['warning']}")
    return lines + table(["source", "usable", "epochs", "min / median / max", "never placed"], rows) + warnings


def length_lines(st: dict[str, Any]) -> list[str]:
    edges = next(iter(st["lengths"].values()))["histogram"]["edges"] if st["lengths"] else [0, 0]
    lines = [
        f"  lengths in tokens (text + image) of the n tokenised samples: deciles; histogram over "
        f"{len(edges) - 1} bins of {edges[1] - edges[0]} tokens from 0 to {edges[-1]}:"
    ]
    header = ["source", "n", *(f"p{q}" for q in DECILES), "mean", f">{st['spec']['seq_len']}", "histogram"]
    rows = []
    for name, s in st["lengths"].items():
        deciles = s["deciles"] or ["-"] * len(DECILES)
        mean = "-" if s["mean"] is None else f"{s['mean']:.1f}"
        hist = "|" + sparkline(s["histogram"]["counts"]) + "|"
        rows.append([name, f"{s['tokenised']:,}", *deciles, mean, s["over_seq_len"], hist])
    return lines + table(header, rows)


def error_lines(st: dict[str, Any]) -> list[str]:
    lines = [f"  tokenisation errors: {st['tokenisation_errors']}"]
    for name, s in st["lengths"].items():
        if s["errors"]:
            keys = ", ".join(str(e["key"]) for e in s["error_examples"])
            more = ", …" if s["errors"] > len(s["error_examples"]) else ""
            lines.append(f"    {name}: {s['errors']} (keys {keys}{more}); first: {s['error_examples'][0]['error']}")
    return lines


def stage_lines(name: str, st: dict[str, Any]) -> list[str]:
    spec, cfg = st["spec"], st["settings"]
    head = (
        f"stage {name}: {st['num_sequences']:,} sequences of {spec['seq_len']} in {st['num_windows']} windows, "
        f"{st['num_tokens']:,} tokens; weight_by {spec['weight_by']}, template {cfg.get('template', '?')}, "
        f"{cfg.get('image_tokens', '?')} image tokens"
    )
    worst = f"{st['worst_window_deviation_pp']:.2f} pp"
    if st["worst_window"] is not None:
        worst += f" (window {st['worst_window']} of {spec['window']} sequences)"
    gone = ", ".join(f"{e['source']} (window {e['window']}, sequence {e['sequence']})" for e in st["exhausted"])
    lines = [head, *mixture_lines(st)]
    lines.append(f"  packing efficiency {pct(st['packing_efficiency'])}; worst windowed deviation {worst}")
    lines.append(f"  exhausted: {gone or 'none'}")
    if st["stopped_early"]:
        lines.append(f"  stopped early: {st['stopped_early']}")
    return lines + coverage_lines(st) + error_lines(st) + length_lines(st)


def ablation_lines(ab: dict[str, Any]) -> list[str]:
    if "error" in ab:
        return [f"ablation {ab['name']}: unreadable results: {ab['error']}"]
    variants = ab["variants"]
    sources = list(dict.fromkeys(s for v in variants for s in [*v["mixture"], *v["eval_loss"]]))
    stage = f" (stage {ab['stage']})" if ab["stage"] else ""
    lines = [f"ablation {ab['name']}{stage}: {len(variants)} variants; mean loss is the unweighted mean over sources"]
    header = ["variant", "status", *(f"{s} share" for s in sources), *(f"{s} loss" for s in sources), "mean loss"]
    rows = []
    for v in variants:
        shares = [pct(v["mixture"].get(s)) for s in sources]
        losses = [f"{v['eval_loss'][s]:.4f}" if s in v["eval_loss"] else "-" for s in sources]
        mean = f"{sum(v['eval_loss'].values()) / len(v['eval_loss']):.4f}" if v["eval_loss"] else "-"
        status = v["status"] if not v["error"] else f"{v['status']}: {v['error'].splitlines()[0]}"
        rows.append([v["name"], status, *shares, *losses, mean])
    return lines + table(header, rows)


def render(report: dict[str, Any]) -> str:
    """The whole summary, sections separated by blank lines."""
    sections = [build_lines(report["build"])]
    sections += [stage_lines(name, st) for name, st in report["stages"].items()]
    sections += [ablation_lines(ab) for ab in report["ablations"]]
    sections += [audit_lines(name, audit) for name, audit in report.get("audit", {}).items()]
    return "\n\n".join("\n".join(s) for s in sections) + "\n"
