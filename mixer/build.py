"""`mixer build`: manifest → shards (Ray) → length index → stage plans. Each step resumes where the last run stopped."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mixer.lengths import build_lengths
from mixer.manifest import Manifest
from mixer.plan import PlanSummary
from mixer.planning import plan_one
from shards.build import SourceReport, build_shards
from shards.readers import SourceSpec


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


def plan(m: Manifest, out: str | None = None, ray_address: str | None = None) -> dict[str, PlanSummary]:
    """Length-index every stage's sources (cached per tokenisation) and plan every stage."""
    out = out or m.output
    summaries = {}
    for i, stage in enumerate(m.stages):
        n_img = m.model.image_tokens_for(stage.image_size)
        lengths = build_lengths(
            out, list(stage.mixture), m.model.tokenizer_path(), stage.template, n_img, ray_address=ray_address
        )
        summaries[stage.name] = plan_one(m, i, out, lengths)
    return summaries
