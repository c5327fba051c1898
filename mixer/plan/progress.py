"""A bar with an ETA over a stage's planning: windows planned of the stage's total, or tokens for a token budget.

A stage sized in sequences (`steps`) has ⌈num_sequences / window⌉ windows, known before the first; a stage sized in
tokens (`tokens`, `epochs`) ends where its token budget is reached, after a number of windows no one knows ahead,
so its bar counts the tokens placed (capped at the budget). The bar is `shards.progress`' (a log gets lines).
"""

from __future__ import annotations

from collections.abc import Iterator

from mixer.plan.planner import PlanSpec, Window
from shards.progress import progress


def windows_progress(windows: Iterator[Window], spec: PlanSpec, desc: str) -> Iterator[Window]:
    """Yield `windows` unchanged while the bar `desc` counts them against the stage's size."""
    by_tokens = spec.num_sequences is None
    total = spec.num_tokens if by_tokens else -(-spec.num_sequences // spec.window)
    unit = " tokens" if by_tokens else " windows"
    with progress(total=total, desc=desc, unit=unit, unit_scale=by_tokens) as bar:
        for window in windows:
            yield window
            bar.update(min(int(window.segments["tokens"].sum()), total - bar.n) if by_tokens else 1)
