"""Planned mixtures: which samples, in which order, packed into which sequences — a pure function of inputs.

The algorithm alone (no manifest): `mixer.planning` feeds it one stage, `mixer.build` runs it for every stage.

A stage plan meets the declared weights in every window of `spec.window` packed sequences: a weight is a share of
the stage's *tokens* (`weight_by="tokens"`: text + image tokens of the placed segments, truncated ones counted as
cut) or of its *samples* (`weight_by="samples"`), normalised over the sources. `iter_plan` yields the windows
without touching a disk; `plan_stage` streams them into a chunked plan folder that `PlanReader` opens at any
sequence. Packing algorithms are chosen by name from `ALGORITHMS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mixer.plan.cache import kernel_cache

with kernel_cache():  # before any kernel module is imported: see mixer/plan/cache.py
    from mixer.plan.pack import best_fit_decreasing, first_fit_decreasing
    from mixer.plan.planner import SEGMENT_DTYPE, Packer, Planner, PlanSpec, PlanSummary, SourceInput, Window
from mixer.plan.progress import windows_progress
from mixer.plan.store import WINDOWS_PER_CHUNK, PlanReader, PlanWriter

ALGORITHMS: dict[str, Packer] = {
    "best_fit_decreasing": best_fit_decreasing,
    "first_fit_decreasing": first_fit_decreasing,
}

__all__ = [
    "ALGORITHMS",
    "SEGMENT_DTYPE",
    "PlanReader",
    "PlanSpec",
    "PlanSummary",
    "SourceInput",
    "Window",
    "iter_plan",
    "packer",
    "plan_stage",
]


def packer(name: str) -> Packer:
    """The packing function called `name`; an unknown name raises ValueError listing the known ones."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm: unknown packing algorithm {name!r}; choose one of {sorted(ALGORITHMS)}") from None


def iter_plan(sources: list[SourceInput], spec: PlanSpec) -> Iterator[Window]:
    """The windows of the stage's plan, in order (checks the inputs before the first window is asked for)."""
    return Planner(sources, spec, packer(spec.algorithm)).windows()


def plan_stage(
    sources: list[SourceInput],
    spec: PlanSpec,
    out: str | Path,
    *,
    windows_per_chunk: int = WINDOWS_PER_CHUNK,
    progress: str | None = None,
) -> PlanSummary:
    """Plan the stage into the folder `out` (replacing an older plan there) and return its summary.

    progress: the description of a bar with an ETA over the windows (`mixer.plan.progress`); None: no bar.
    """
    planner = Planner(sources, spec, packer(spec.algorithm))
    writer = PlanWriter(out, windows_per_chunk)
    windows = planner.windows()
    for window in windows_progress(windows, spec, progress) if progress else windows:
        writer.add(window)
    summary = planner.summary()
    writer.close(summary.to_dict())
    return summary
