"""Per-step training metrics: one JSON line per optimizer step (fanned out to `report_to`: train.report), a bar.

Counts are over all ranks (the loop all-reduces them); rates divide by the step's wall time, which includes the time
spent waiting on the loader (reported separately as `loader_wait_s`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from mixer.batch import PackedBatch
from shards.progress import progress
from train import report


def batch_counts(batch: PackedBatch) -> tuple[int, int, int]:
    """(tokens, samples, images) of a micro batch: non-padding tokens, packed segments, images."""
    seg = batch["segment_ids"]
    tokens = int((seg > 0).sum())
    samples = int(seg.max(dim=1).values.sum())  # segments are numbered 1, 2, 3 … within each row
    return tokens, samples, int(batch["pixel_values"].shape[0])


def memory_mb() -> dict[str, float]:
    """Resident set size of this process and, on a GPU, the peak CUDA memory allocated (MiB)."""
    out = {"rss_mb": psutil.Process().memory_info().rss / 2**20}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


@dataclass
class StepMetrics:
    """What one optimizer step did (loss: the mean over all its label tokens, every micro batch and rank)."""

    stage: str
    step: int
    loss: float
    lr: float
    grad_norm: float | None
    tokens: int
    samples: int
    images: int
    step_time_s: float
    loader_wait_s: float
    lrs: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=memory_mb)

    def record(self) -> dict[str, Any]:
        """The JSON line: raw counts, rates per second and memory, flat."""
        row = {k: v for k, v in asdict(self).items() if k != "memory"}
        per_s = 1.0 / self.step_time_s if self.step_time_s > 0 else 0.0
        row.update(
            tokens_per_s=self.tokens * per_s,
            samples_per_s=self.samples * per_s,
            images_per_s=self.images * per_s,
            **self.memory,
        )
        return row


def _row(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # the line a kill cut short
        return None


def keep_steps_up_to(path: Path, step: int) -> int:
    """Drop the rows of a metrics JSONL past `step` (a resumed stage redoes them); returns the rows kept.

    Rewritten through a temporary file and a rename, so a kill here leaves the old file or the new one.
    """
    if not path.exists():
        return 0
    kept = [line for line in path.read_text().splitlines() if (row := _row(line)) and row["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)
    return len(kept)


class MetricsWriter:
    """Appends `StepMetrics` to a JSONL file, fans it out to `report_to`, and moves a bar with an ETA (rank 0 only).

    A writer starting at step `initial` first drops the file's rows past it: after a resume they are redone, and
    each step keeps one row (the latest run's).
    """

    def __init__(self, path: str | Path, *, total: int, initial: int, enabled: bool, desc: str = "") -> None:
        self.enabled = enabled
        self.path = Path(path)
        self.file = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keep_steps_up_to(self.path, initial)
            self.file = self.path.open("a")
        self.bar = progress(total=total, initial=initial, desc=desc, unit=" steps", disable=not enabled)

    def write(self, m: StepMetrics) -> None:
        if not self.enabled:
            return
        row = m.record()
        assert self.file is not None
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        report.log(row)  # TensorBoard and W&B: the run's `report_to` fan-out
        self.bar.set_postfix(loss=f"{m.loss:.4f}", lr=f"{m.lr:.2e}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
