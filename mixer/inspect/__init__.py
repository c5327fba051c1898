"""What a build holds, as one JSON-able dict for `mixer inspect` and for scripts.

Build status per source, each stage's plan summary against its declared mixture, how often the plan places each
sample (coverage, checked against the epochs), length statistics from the length index, and ablation results where
a sweep has written them.

`inspect_build(out)` reads the summaries, the plans (coverage holds a uint32 a sample) and the length index; the
index is scanned a batch at a time (exact per-length counts, so memory follows the longest sample, not the number of
rows). `mixer.inspect.text` renders the dict for people and `mixer.inspect.plots` draws it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, ValidationError

from shards import fs

HIST_BINS = 20  # bins of the per-stage length histograms (same edges for every source of a stage)
ERROR_EXAMPLES = 5  # tokenisation errors listed by key per source
BATCH_ROWS = 65536  # rows read at a time from a length index
DECILES = tuple(range(0, 101, 10))


class InspectError(ValueError):
    """A build folder that cannot be inspected (missing, no stages, unfinished plan); the message names the path."""


# ---- ablation results: the file `mixer ablate` writes and `mixer inspect` shows


class AblationVariant(BaseModel):
    """One variant of a sweep as `mixer.ablate` records it (`VariantResult`): its mixture and what it measured."""

    name: str = Field(description="Variant name, e.g. 'ocrvqa-0.2'.")
    mixture: dict[str, float] = Field(description="Source -> share of the variant's declared mixture.")
    realised_shares: dict[str, float] = Field(default_factory=dict, description="Source -> share the plan realised.")
    eval_loss: dict[str, float] = Field(default_factory=dict, description="Source -> mean held-out loss.")
    eval_accuracy: dict[str, float | None] = Field(
        default_factory=dict, description="Source -> exact-match accuracy (VQA, OCR); None where it does not apply."
    )
    status: str = Field("ok", description="'ok', or 'failed' with `error` set.")
    error: str | None = Field(None, description="Why a failed variant failed.")
    tokens_seen: int | None = Field(None, description="Tokens the proxy run trained on.")
    wall_time_s: float | None = Field(None, description="Wall time of the variant.")


class AblationResults(BaseModel):
    """`OUT/ablations/<name>/results.json`: the variants of one sweep (extra keys are kept out of the way)."""

    stage: str | None = Field(None, description="The stage the sweep varies.")
    varied: str | None = Field(None, description="The source a grid sweep varies (None for random mixtures).")
    variants: list[AblationVariant] = Field(description="Every variant, finished or failed.")


def read_ablations(out: str | Path) -> list[dict[str, Any]]:
    """Each `OUT/ablations/<name>/results.json`, validated; a malformed one becomes {name, path, error}."""
    found = []
    root = fs.join(str(out), "ablations")
    for name in fs.list_names(root):
        path = fs.join(root, name, "results.json")
        if not fs.exists(path):
            continue
        entry: dict[str, Any] = {"name": name, "path": path}
        try:
            results = AblationResults.model_validate_json(fs.read_bytes(path))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            entry["error"] = f"{path}: {where}: {err['msg']}"
        else:
            entry.update(results.model_dump())
        found.append(entry)
    return found


# ---- length index statistics


@dataclass
class LengthScan:
    """One length index read in batches: exact counts per token length (tokenised samples only) and errors."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # counts[L] = samples of length L
    rows: int = 0
    errors: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # {row, key, error} of the first errors

    def add(self, lengths: np.ndarray) -> None:
        c = np.bincount(lengths)
        if len(c) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(c) - len(self.counts)))
        self.counts[: len(c)] += c


def scan_lengths(url: str, examples: int = ERROR_EXAMPLES) -> LengthScan:
    """Read a merged `lengths.parquet` a batch at a time; keys are read only in row groups holding a listed error."""
    fs_, path = fs.resolve(url)
    if not fs_.exists(path):
        raise InspectError(f"{url}: length index not found (rerun `mixer build` to recreate it)")
    scan = LengthScan()
    with fs_.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            first_row, wanted = scan.rows, len(scan.examples)
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=["length", "error"]):
                bad = batch.column("error").is_valid().to_numpy(zero_copy_only=False)
                lengths = batch.column("length").to_numpy(zero_copy_only=False)
                scan.add(lengths[~bad].astype(np.int64, copy=False))
                if bad.any():
                    scan.errors += int(bad.sum())
                    messages = batch.column("error")
                    for i in np.flatnonzero(bad)[: examples - len(scan.examples)].tolist():
                        scan.examples.append({"row": scan.rows + i, "key": None, "error": messages[i].as_py()})
                scan.rows += batch.num_rows
            if len(scan.examples) > wanted:
                _fill_keys(pf, rg, first_row, scan.examples[wanted:])
    return scan


def _fill_keys(pf: pq.ParquetFile, rg: int, first_row: int, pending: list[dict[str, Any]]) -> None:
    todo = {e["row"] - first_row: e for e in pending}
    offset, last = 0, max(todo)
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=["key"]):
        keys = batch.column("key")
        for i in [i for i in todo if offset <= i < offset + batch.num_rows]:
            todo[i]["key"] = keys[i - offset].as_py()
        offset += batch.num_rows
        if offset > last:
            break


def quantile(counts: np.ndarray, q: float) -> int:
    """The q-th percentile (0..100) of the lengths `counts` describes, numpy's `method="lower"` definition."""
    cum = np.cumsum(counts)
    rank = math.floor(q / 100 * (int(cum[-1]) - 1))
    return int(np.searchsorted(cum, rank, side="right"))


def hist_edges(max_length: int, bins: int = HIST_BINS) -> list[int]:
    """Integer edges of `bins` equal half-open bins [e_i, e_i+1) covering 0..max_length."""
    width = max(1, math.ceil((max_length + 1) / bins))
    return [i * width for i in range(bins + 1)]


def length_stats(scan: LengthScan, edges: list[int], seq_len: int) -> dict[str, Any]:
    """Summary of one source's lengths: counts, deciles, mean, how many exceed seq_len, and a histogram on `edges`."""
    n = int(scan.counts.sum())
    stats: dict[str, Any] = {"rows": scan.rows, "tokenised": n, "errors": scan.errors, "error_examples": scan.examples}
    cum = np.concatenate([[0], np.cumsum(scan.counts)])
    at = np.minimum(np.asarray(edges), len(scan.counts))
    stats["histogram"] = {"edges": edges, "counts": np.diff(cum[at]).astype(int).tolist()}
    if not n:
        stats.update(min=None, max=None, mean=None, deciles=None, over_seq_len=0)
        return stats
    values = np.arange(len(scan.counts))
    stats["min"], stats["max"] = quantile(scan.counts, 0), quantile(scan.counts, 100)
    stats["mean"] = float((values * scan.counts).sum() / n)
    stats["deciles"] = [quantile(scan.counts, q) for q in DECILES]
    stats["over_seq_len"] = int(scan.counts[seq_len + 1 :].sum())
    return stats


# ---- coverage: how often the plan places each sample


def plan_placements(plan: Any, sizes: list[int]) -> list[np.ndarray]:
    """Placements per sample of each source (uint32 [n]), counted over every sequence of a `PlanReader`."""
    counts = [np.zeros(n, dtype=np.uint32) for n in sizes]
    for segs in plan.segment_chunks():
        for s in range(len(sizes)):
            np.add.at(counts[s], segs["sample"][segs["source"] == s], 1)
    return counts


def usable_samples(url: str, seq_len: int, overlong: str) -> np.ndarray:
    """Which samples of a length index a plan may place: tokenised, and not overlong unless a turn end cuts them."""
    from mixer.lengths import read_lengths

    lengths, (offsets, values), _ = read_lengths(url)
    ok = (lengths > 0) & (lengths <= seq_len)
    if overlong == "truncate":
        over = np.flatnonzero(lengths > seq_len)
        cum = np.concatenate([[0], np.cumsum((values > 0) & (values <= seq_len))])
        ok[over] = cum[offsets[over + 1]] > cum[offsets[over]]  # a turn end in (0, seq_len]: cut there
    return ok


def coverage(placed: np.ndarray, usable: np.ndarray) -> dict[str, Any]:
    """The distribution of placements per usable sample, and a warning when it departs from the epochs.

    A plan places each usable sample floor(E) or ceil(E) times, E = placements / usable samples (the planner's
    bound); anything else, or a placed unusable sample, is reported.
    """
    mine = placed[usable]
    total = int(placed.sum())
    out: dict[str, Any] = {"usable": int(usable.sum()), "placements": total, "min": None, "median": None}
    out.update(max=None, never=0, unusable_placed=int((placed[~usable] > 0).sum()), warning=None)
    if mine.size:
        epochs = total / mine.size
        out.update(min=int(mine.min()), median=float(np.median(mine)), max=int(mine.max()))
        out["never"] = int((mine == 0).sum())
        lo, hi = math.floor(epochs + 1e-9), math.ceil(epochs - 1e-9)
        if out["min"] < lo or out["max"] > hi:
            out["warning"] = (
                f"placements per sample {out['min']}..{out['max']} depart from its {epochs:.2f} epochs "
                f"(expected {lo}..{hi}); {out['never']} of {mine.size} usable samples never placed"
            )
    if out["unusable_placed"]:
        out["warning"] = f"{out['unusable_placed']} samples placed that cannot be (failed tokenisation or overlong)"
    return out


# ---- stages and the build


def _read_json(path: str) -> Any:
    try:
        return json.loads(fs.read_bytes(path))
    except (OSError, json.JSONDecodeError) as e:
        raise InspectError(f"{path}: unreadable: {e}") from None


def find_stages(out: str) -> list[str]:
    """Stage folders (paths or URLs) holding a stage.json, in the manifest's stage order."""
    root = fs.join(out, "stages")
    dirs = [fs.join(root, n) for n in fs.list_names(root)]
    metas = [(_read_json(fs.join(d, "stage.json")), d) for d in dirs if fs.exists(fs.join(d, "stage.json"))]
    return [d for meta, d in sorted(metas, key=lambda m: (m[0].get("index", 0), _name(m[1])))]


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def stage_report(stage_dir: str, scans: dict[str, LengthScan]) -> dict[str, Any]:
    """One stage: its settings, per-source declared vs realised mixture, plan totals and length statistics."""
    from mixer.plan import PlanReader  # numba compiles on import: only when a stage is actually read

    meta = _read_json(fs.join(stage_dir, "stage.json"))
    try:
        plan = PlanReader(fs.join(stage_dir, "plan"))
        s = plan.summary
    except FileNotFoundError as e:
        raise InspectError(str(e)) from None  # names the plan and says to run `mixer build`
    gone = {e["source"] for e in s["exhausted"]}
    sources = {}
    for i, name in enumerate(s["sources"]):
        sources[name] = {
            "declared_share": s["declared_shares"][i],
            "realised_share": {by: s["realised_shares"][by][i] for by in ("samples", "tokens", "images")},
            "epochs": s["epochs"][i],
            "samples": s["samples"][i],
            "tokens": s["tokens"][i],
            "images": s["images"][i],
            "truncated": s["truncated"][i],
            "dropped": s["dropped"][i],
            "exhausted": name in gone,
        }
    lengths_of = meta.get("lengths", {})
    missing = [n for n in s["sources"] if n not in lengths_of]
    if missing:
        raise InspectError(f"{fs.join(stage_dir, 'stage.json')}: lengths: no length index for {', '.join(missing)}")
    for name in s["sources"]:
        url = lengths_of[name]
        if url not in scans:
            scans[url] = scan_lengths(url)
    longest = max((len(scans[lengths_of[n]].counts) - 1 for n in s["sources"]), default=0)
    edges = hist_edges(max(longest, 0))
    seq_len = int(s["spec"]["seq_len"])
    lengths = {n: length_stats(scans[lengths_of[n]], edges, seq_len) for n in s["sources"]}
    overlong = s["spec"].get("overlong", "truncate")
    usable = {n: usable_samples(lengths_of[n], seq_len, overlong) for n in s["sources"]}
    placed = plan_placements(plan, [len(usable[n]) for n in s["sources"]])
    for i, name in enumerate(s["sources"]):
        sources[name]["coverage"] = coverage(placed[i], usable[name])
    keep = ("template", "image_size", "image_tokens", "tokenizer", "global_batch", "micro_batch")
    return {
        "dir": stage_dir,
        "settings": {k: meta[k] for k in keep if k in meta},
        "spec": s["spec"],
        "sources": sources,
        "num_sequences": s["num_sequences"],
        "num_tokens": s["num_tokens"],
        "num_windows": s["num_windows"],
        "packing_efficiency": s["packing_efficiency"],
        "worst_window_deviation_pp": s["worst_window_deviation_pp"],
        "worst_window": s["worst_window"],
        "exhausted": s["exhausted"],
        "stopped_early": s.get("stopped_early"),
        "tokenisation_errors": sum(v["errors"] for v in lengths.values()),
        "lengths": lengths,
    }


def build_report(out: str) -> dict[str, Any] | None:
    """build.json's manifest, time and per-source status counts, or None when the folder has none."""
    path = fs.join(out, "build.json")
    if not fs.exists(path):
        return None
    b = _read_json(path)
    sources = {
        name: {"input_rows": s.get("input_rows"), "shards": s.get("shards"), "counts": s.get("counts", {})}
        for name, s in b.get("sources", {}).items()
    }
    return {k: b.get(k) for k in ("manifest", "manifest_hash", "seconds")} | {"sources": sources}


def inspect_build(out: str | Path, stage: str | None = None, min_share: float | None = None) -> dict[str, Any]:
    """Everything `mixer inspect` shows, as a JSON-able dict: {build_dir, build, stages: {name: ...}, ablations, audit}.

    `audit` is `mixer.inspect.audit.audit_report` (stages flagged below `min_share` supervised tokens).

    `out` is a local folder or an fsspec URL (`s3://…`).
    """
    out = str(out)
    if not (Path(out).is_dir() if "://" not in out else fs.exists(out)):
        raise InspectError(f"{out}: no such build folder")
    dirs = find_stages(out)
    if not dirs:
        raise InspectError(f"{out}: no stages (no stages/<stage>/stage.json; run `mixer build` first)")
    if stage is not None:
        names = [_name(d) for d in dirs]
        if stage not in names:
            raise InspectError(f"--stage: no stage {stage!r} in {out}; built stages: {', '.join(names)}")
        dirs = [d for d in dirs if _name(d) == stage]
    from mixer.inspect.audit import MIN_SHARE, audit_report  # imports the length index module (Ray)

    scans: dict[str, LengthScan] = {}  # stages sharing a tokenisation share one length index: read it once
    report = {
        "build_dir": out,
        "build": build_report(out),
        "stages": {_name(d): stage_report(d, scans) for d in dirs},
        "ablations": read_ablations(out),
    }
    report["audit"] = audit_report(report, MIN_SHARE if min_share is None else min_share)
    return report


__all__ = ["AblationResults", "AblationVariant", "InspectError", "inspect_build", "read_ablations", "scan_lengths"]
