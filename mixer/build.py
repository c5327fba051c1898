"""`mixer build`: manifest → shards (Ray) → length index → stage plans. Each step resumes where the last run stopped."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mixer.lengths import build_lengths, cache_key, lengths_dir
from mixer.manifest import Manifest
from mixer.plan import PlanSummary
from mixer.planning import plan_one
from shards import fs
from shards.build import SourceReport, build_shards, source_dir
from shards.index import MERGED_INDEX, index_id
from shards.readers import SourceSpec

# In each length index folder: the id of the source index it was computed from (see `drop_stale_lengths`).
LENGTHS_OF = "index_id"


def source_specs(m: Manifest, only: list[str] | None = None) -> list[SourceSpec]:
    """The manifest's sources as reader specs (all, or the named ones; unknown names are a ValueError)."""
    names = only or list(m.sources)
    unknown = [n for n in names if n not in m.sources]
    if unknown:
        raise ValueError(f"--sources: unknown source {', '.join(unknown)}; declared: {', '.join(m.sources)}")
    return [
        SourceSpec(
            name=n,
            kind=m.sources[n].kind,
            paths=m.sources[n].paths,
            task=m.sources[n].task_tag,
            image_root=m.sources[n].image_root,
            options=m.sources[n].options,
            allow_outside_root=m.sources[n].allow_outside_root,
        )
        for n in names
    ]


def manifest_hash(m: Manifest) -> str:
    return hashlib.sha256(json.dumps(m.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def build(
    m: Manifest, out: str | None = None, sources: list[str] | None = None, ray_address: str | None = None
) -> dict[str, SourceReport]:
    """Build the shards of the manifest's sources into `out` (default: the manifest's output folder)."""
    meta: dict[str, Any] = {"manifest": m.name, "manifest_hash": manifest_hash(m)}
    return build_shards(source_specs(m, sources), m.shards, out or m.output, ray_address=ray_address, build_meta=meta)


def plan(
    m: Manifest, out: str | None = None, ray_address: str | None = None, max_plan_bytes: int | None = None
) -> dict[str, PlanSummary]:
    """Length-index every stage's sources (cached per tokenisation) and plan every stage.

    max_plan_bytes: refuse (`PlanError`) a stage whose stored plan is estimated past this many bytes.
    """
    out = out or m.output
    used = sorted({s for stage in m.stages for s in stage.mixture})
    drop_stale_lengths(out, used)
    summaries = {}
    for i, stage in enumerate(m.stages):
        n_img = m.model.image_tokens_for(stage.image_size)
        lengths = build_lengths(
            out, list(stage.mixture), m.model.tokenizer_path(), stage.template, n_img, ray_address=ray_address
        )
        key = cache_key(m.model.tokenizer_path(), stage.template, n_img)
        for source in stage.mixture:
            _mark_lengths(lengths_dir(out, key, source), _index_id(out, source))
        summaries[stage.name] = plan_one(m, i, out, lengths, max_plan_bytes)
    return summaries


def drop_stale_lengths(out: str, sources: list[str]) -> list[str]:
    """Delete the length indexes computed from another version of a source's shards; return the folders deleted.

    A length index follows its source's `index.parquet` row for row and is otherwise reused as long as it exists,
    so after a rebuild changed a source's shards (new id in the merged index) every length index of that source
    goes. A folder with no id (written before ids existed, or by a run killed before marking it) goes too.
    """
    dropped = []
    for key in fs.list_names(fs.join(out, "lengths")):
        for source in sources:
            ldir = lengths_dir(out, key, source)
            ident = _index_id(out, source)
            if ident is None or not fs.exists(ldir):
                continue
            marker = fs.join(ldir, LENGTHS_OF)
            if not fs.exists(marker) or fs.read_bytes(marker).decode() != ident:
                fsys, path = fs.resolve(ldir)
                fsys.rm(path, recursive=True)
                dropped.append(ldir)
    return dropped


def _index_id(out: str, source: str) -> str | None:
    url = fs.join(source_dir(out, source), MERGED_INDEX)
    return index_id(url) if fs.exists(url) else None


def _mark_lengths(ldir: str, ident: str | None) -> None:
    if ident is not None and fs.exists(ldir):
        fs.put_bytes(fs.join(ldir, LENGTHS_OF), ident.encode())


def report_lines(reports: dict[str, SourceReport]) -> list[str]:
    """What `mixer build` prints per source: rows, shards, reuse, statuses, then what was rebuilt or removed and why."""
    lines = []
    for name, r in reports.items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r.by_status.items()) if v)
        lines.append(f"{name:>12}: {r.input_rows} rows in {r.shards} shards ({r.skipped_shards} reused): {counts}")
        for reason, shards in sorted(r.rebuilt.items()):
            lines.append(f"{'':>12}  rebuilt {len(shards)} shards ({shard_ranges(shards)}), {reason}")
        if r.removed:
            lines.append(f"{'':>12}  removed {len(r.removed)} stale shards ({shard_ranges(r.removed)})")
    return lines


def shard_ranges(shards: list[int], limit: int = 4) -> str:
    """`00000-00003, 00007` for [0, 1, 2, 3, 7]; past `limit` ranges, `…`."""
    runs: list[list[int]] = []
    for s in sorted(shards):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = [f"{a:05d}" if a == b else f"{a:05d}-{b:05d}" for a, b in runs]
    return ", ".join(text[:limit]) + (", …" if len(text) > limit else "")
