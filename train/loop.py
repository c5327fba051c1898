"""Run one training stage: freeze → engine → (resume) → micro batches → forward/backward/step → metrics, checkpoints.

The loader yields this rank's micro batches in order; an optimizer step takes `gradient_accumulation_steps` of them.
A non-finite loss on any rank stops every rank before the backward pass, so the weights of the last good checkpoint
are never touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from mixer.batch import PackedBatch, normalize_pixels
from mixer.manifest.runtime import DeepSpeedSettings
from mixer.manifest.stages import StageConfig
from train import checkpoint
from train.engine import build_engine
from train.freeze import freeze_stage
from train.metrics import MetricsWriter, StepMetrics, batch_counts


class StageLoader(Protocol):
    """What the trainer needs from the mixer's loader: this rank's micro batches and an exact, restorable position."""

    def __iter__(self) -> Iterator[PackedBatch]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops before the bad gradients reach the weights."""


@dataclass
class StageResult:
    """What `run_stage` did: steps `start_step`+1 … `steps_done` ran in this call, with these losses.

    `checkpoint` is the last one saved or resumed from (the stage-end one when the stage completed).
    """

    steps_done: int
    start_step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None

    @property
    def loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def _all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _grad_norm(engine: Any) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def train_step(
    engine: Any, batches: Iterator[PackedBatch], stage: StageConfig, step: int, last_good: str
) -> StepMetrics:
    """One optimizer step of `gradient_accumulation_steps` micro batches per rank; counts summed over ranks."""
    gas = engine.gradient_accumulation_steps()
    world = dist.get_world_size() if dist.is_initialized() else 1
    started, waited = time.perf_counter(), 0.0
    totals = [0.0, 0.0, 0.0, 0.0]  # loss sum, tokens, samples, images
    # The scheduler moves inside the last engine.step(); record the lr this step's update uses.
    lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(engine.optimizer.param_groups)}
    for micro in range(gas):
        t = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - t
        if batch is None:
            raise RuntimeError(f"stage {stage.name}: the loader ran out at step {step + 1}, micro batch {micro + 1}")
        loss = engine(normalize_pixels(batch, engine.device)).loss  # uint8 pixels move, then normalise
        value = float(loss.detach())
        finite = torch.isfinite(loss.detach()).item()
        loss_sum, bad, *counts = _all_sum([value if finite else 0.0, 0.0 if finite else 1.0, *batch_counts(batch)])
        if bad:
            raise NonFiniteLossError(
                f"stage {stage.name}: non-finite loss at step {step + 1}, micro batch {micro + 1} "
                f"({int(bad)} of {world} ranks); last good checkpoint: {last_good}"
            )
        engine.backward(loss)
        engine.step()
        totals = [a + b for a, b in zip(totals, [loss_sum, *counts], strict=True)]
    return StepMetrics(
        stage=stage.name,
        step=step + 1,
        loss=totals[0] / (gas * world),
        lr=next(iter(lrs.values())),
        lrs=lrs,
        grad_norm=_grad_norm(engine),
        tokens=int(totals[1]),
        samples=int(totals[2]),
        images=int(totals[3]),
        step_time_s=time.perf_counter() - started,
        loader_wait_s=waited,
    )


def run_stage(
    model: nn.Module,
    stage: StageConfig,
    ds: DeepSpeedSettings,
    loader: StageLoader,
    *,
    run_dir: str | Path,
    stage_index: int,
    steps: int,
    resume: bool,
    checkpoint_every: int,
    keep_last: int = 2,
    metrics_path: str | Path,
    connector_lr: float | None = None,
    vision_checkpointing: bool = False,
) -> StageResult:
    """Train `model` for `steps` optimizer steps of `stage`; checkpoint every `checkpoint_every` steps and at the end.

    With `resume`, the stage continues from its latest checkpoint (weights, optimizer, schedule, RNG and loader
    position), or starts afresh when it has none. `model` comes back a plain fp32 module holding the stage's final
    weights (`checkpoint.release`), ready for the next stage or the export.
    """
    if steps < 1:
        raise ValueError(f"stages[{stage_index}]: a stage needs at least one step (got {steps})")
    report = freeze_stage(model, stage, stage_index)
    plain = checkpoint.param_attrs(model)
    engine = build_engine(
        model,
        stage,
        ds,
        steps,
        stage_index=stage_index,
        connector_lr=connector_lr,
        vision_checkpointing=vision_checkpointing,
    )
    ckpt_dir = checkpoint.stage_dir(run_dir, stage_index, stage.name)
    point = checkpoint.load(engine, ckpt_dir, loader, stage_index) if resume else None
    start = point.step if point else 0
    result = StageResult(steps_done=start, start_step=start, checkpoint=point.path if point else None)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0 and start < steps:
        print(f"stage {stage_index} {stage.name}: {report}; steps {start + 1}-{steps}", flush=True)
    engine.train()
    batches = iter(loader)
    with MetricsWriter(metrics_path, total=steps, initial=start, enabled=rank0, desc=stage.name) as writer:
        for step in range(start, steps):
            last_good = str(result.checkpoint) if result.checkpoint else "none in this stage yet"
            metrics = train_step(engine, batches, stage, step, last_good)
            writer.write(metrics)
            result.losses.append(metrics.loss)
            result.steps_done = step + 1
            if result.steps_done == steps or (checkpoint_every and result.steps_done % checkpoint_every == 0):
                result.checkpoint = checkpoint.save(
                    engine,
                    ckpt_dir,
                    result.steps_done,
                    stage_index=stage_index,
                    loader_state=loader.state_dict(),
                    keep_last=keep_last,
                )
    checkpoint.release(engine, model, plain)
    return result
