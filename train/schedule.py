"""The per-step learning-rate schedule of a stage: linear warm-up to the peak, then a cosine down to `min_lr`.

`lr_factor` is the pure function (a multiple of each parameter group's peak lr); `stage_scheduler` wraps it in a
`LambdaLR` that DeepSpeed steps once per optimizer step and saves in its checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mixer.manifest.stages import StageConfig


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiple of the peak lr used by optimizer step `step` (0-based) of a stage of `total` steps.

    Warm-up: steps 0 … warmup-1 rise linearly as (step + 1) / warmup, so the first update already moves and the
    last warm-up step uses the peak. Then a half cosine from 1 at `step == warmup` to `min_ratio` at `step == total`
    (the value a finished stage reports); steps past the end stay at `min_ratio`.
    """
    if step < warmup:
        return (step + 1) / warmup
    span = total - warmup
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StageSchedule:
    """`lr_factor` bound to one stage; a picklable callable, so `LambdaLR.state_dict()` can save it."""

    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        return lr_factor(step, warmup=self.warmup, total=self.total, min_ratio=self.min_ratio)


def stage_schedule(stage: StageConfig, steps: int) -> StageSchedule:
    """The schedule of `stage` run for `steps` optimizer steps: warm-up from the stage, min_lr as a ratio of lr.

    Every parameter group decays by the same factor, so a connector group with its own peak lr ends at
    `connector_lr * min_lr / lr`.
    """
    opt = stage.optimizer
    warmup = stage.warmup(steps)
    if warmup > steps:
        raise ValueError(f"stages.{stage.name}.optimizer: warm-up of {warmup} steps is longer than the stage ({steps})")
    return StageSchedule(warmup=warmup, total=steps, min_ratio=opt.min_lr / opt.lr)


def stage_scheduler(optimizer: Optimizer, stage: StageConfig, steps: int) -> LambdaLR:
    """A `LambdaLR` over every parameter group of `optimizer` following `stage_schedule`."""
    return LambdaLR(optimizer, stage_schedule(stage, steps))
