"""Run one training stage: freeze → engine → (resume) → micro batches → forward/backward/step → metrics, checkpoints.

The loader yields this rank's micro batches in order; an optimizer step takes `gradient_accumulation_steps` of them,
and its loss is the mean over all its label tokens (see `train_step`). A non-finite loss on any rank stops every rank
before the optimizer update, so the weights of the last good checkpoint are never touched.
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
from mixer.manifest.stages import StageConfig
from train import checkpoint
from train.engine import build_engine
from train.freeze import freeze_stage
from train.metrics import MetricsWriter, StepMetrics, batch_counts
from train.model.vlm import is_varlen, label_tokens
from train.stagerun import StageRun


class PlannedBatches(Protocol):
    """What the trainer needs from a loader (the mixer's `StageLoader`, or a test's).

    This rank's micro batches and an exact, restorable position.
    """

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


def _grad_norm(engine: Any) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the ranks, in place (a no-op for one rank).

    `t` must be on the engine's device: NCCL reduces CUDA tensors only.
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def _vector(values: list[float], device: torch.device) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float64)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)  # no wait on the device's queue
    return t.to(device)


def to_device(batch: PackedBatch, device: torch.device) -> PackedBatch:
    """The batch's tensors on `device`, to a GPU through pinned memory without the host waiting.

    The copies queue on the stream ahead of the compute that reads them; a plain `.to()` from pageable memory would
    wait for the stream, once per micro batch.
    """
    if device.type != "cuda":
        return batch
    return PackedBatch(**{k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()})  # type: ignore[typeddict-item]


def _take(batches: Iterator[PackedBatch], n: int, stage: StageConfig, step: int) -> tuple[list[PackedBatch], float]:
    """The step's `n` micro batches of this rank, and the time spent waiting for them."""
    taken, t = [], time.perf_counter()
    for micro in range(n):
        batch = next(batches, None)
        if batch is None:
            raise RuntimeError(f"stage {stage.name}: the loader ran out at step {step + 1}, micro batch {micro + 1}")
        taken.append(batch)
    return taken, time.perf_counter() - t


def train_step(
    engine: Any, batches: Iterator[PackedBatch], stage: StageConfig, step: int, last_good: str
) -> StepMetrics:
    """One optimizer step of `gradient_accumulation_steps` micro batches per rank; counts summed over ranks.

    The step's loss is token-exact: the sum of its token losses over every micro batch and rank divided by the
    step's label tokens (counted on the host from the CPU batches, summed over ranks once), so a token weighs the
    same in a sparse micro batch as in a full one. DeepSpeed divides each micro batch's loss by the accumulation
    steps and averages gradients over the ranks; each micro batch's loss sum is divided by labels / (gas × world)
    to undo both exactly. Reductions run on the engine's device (NCCL takes CUDA tensors only) and the host waits
    on them once per step, before the update, where it checks that every loss was finite.
    """
    gas = engine.gradient_accumulation_steps()
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = torch.device(engine.device)
    started = time.perf_counter()
    # The scheduler moves inside the last engine.step(); record the lr this step's update uses.
    lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(engine.optimizer.param_groups)}
    micro_batches, waited = _take(batches, gas, stage, step)
    counts = [sum(c) for c in zip(*((label_tokens(b), *batch_counts(b)) for b in micro_batches), strict=True)]
    counts = all_reduce(_vector(counts, device))  # labels, tokens, samples, images over the step and ranks
    per_rank_micro = (counts[0].clamp(min=1) / (gas * world)).float()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    bad = torch.zeros(gas, dtype=torch.float64, device=device)
    on_device = [to_device(b, device) for b in micro_batches]  # every copy queued before the first forward
    for micro, batch in enumerate(on_device):
        loss = engine(normalize_pixels(batch, device), num_items_in_batch=per_rank_micro).loss
        finite = torch.isfinite(loss.detach())
        bad[micro] = (~finite).double()
        loss_sum += torch.where(finite, loss.detach().double(), 0.0)
        engine.backward(loss)  # a non-finite loss poisons only gradients: the weights move in the last step()
        if micro < gas - 1:
            engine.step()
    reduced = all_reduce(torch.cat([loss_sum[None], bad]))
    host = torch.cat([reduced, counts]).tolist()  # the step's one host sync
    loss_sum, bad_ranks, (_, tokens, samples, images) = host[0], host[1 : gas + 1], host[gas + 1 :]
    if any(bad_ranks):
        micro = next(i for i, n in enumerate(bad_ranks) if n)
        raise NonFiniteLossError(
            f"stage {stage.name}: non-finite loss at step {step + 1}, micro batch {micro + 1} "
            f"({int(bad_ranks[micro])} of {world} ranks); last good checkpoint: {last_good}"
        )
    engine.step()
    return StepMetrics(
        stage=stage.name,
        step=step + 1,
        loss=loss_sum / (gas * world),  # Σ (token-loss sums · gas · world / labels) / (gas · world)
        lr=next(iter(lrs.values())),
        lrs=lrs,
        grad_norm=_grad_norm(engine),
        tokens=int(tokens),
        samples=int(samples),
        images=int(images),
        step_time_s=time.perf_counter() - started,
        loader_wait_s=waited,
    )


def budget_attention_note(stage: StageConfig, attn_implementation: str | None) -> str | None:
    """A warning when `packing: budget` meets an attention without varlen support, else None.

    A budget micro batch is one row of micro_batch × seq_len tokens; without `cu_seq_lens` the samples are kept apart
    by a dense block-diagonal mask over the whole row: correct, but its memory and time grow with the row's square.
    """
    if stage.bin_rows == 1 or is_varlen(attn_implementation):
        return None
    width = stage.bin_rows * stage.seq_len
    return (
        f"stage {stage.name}: packing: budget under {attn_implementation} attention masks each micro batch as one row "
        f"of {width} tokens ({width}² mask entries per head); flash_attention_2 (a CUDA GPU) reads it without a "
        f"mask, packing: rows keeps rows of {stage.seq_len}"
    )


def run_stage(model: nn.Module, run: StageRun, loader: PlannedBatches) -> StageResult:
    """Train `model` for `run.steps` optimizer steps; checkpoint every `run.checkpoint_every` steps and at the end.

    With `run.resume`, the stage continues from its latest checkpoint (weights, optimizer, schedule, RNG and loader
    position), or starts afresh when it has none. `model` comes back a plain fp32 module holding the stage's final
    weights (`checkpoint.release`), ready for the next stage or the export.
    """
    stage, steps = run.stage, run.steps
    if steps < 1:
        raise ValueError(f"{run.where}: a stage needs at least one step (got {steps})")
    report = freeze_stage(model, stage, run.index)
    plain = checkpoint.param_attrs(model)
    ckpt_dir = run.checkpoints
    world = dist.get_world_size() if dist.is_initialized() else 1
    engine = build_engine(model, run, load_universal=run.resume and checkpoint.needs_universal(ckpt_dir, world))
    point = checkpoint.load(engine, ckpt_dir, loader, run.index) if run.resume else None
    start = point.step if point else 0
    result = StageResult(steps_done=start, start_step=start, checkpoint=point.path if point else None)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0 and start < steps:
        print(f"stage {run.index + 1} {stage.name}: {report}; steps {start + 1}-{steps}", flush=True)
        llm = getattr(model, "llm", None)
        note = budget_attention_note(stage, llm.config._attn_implementation) if llm is not None else None
        if note:
            print(f"warning: {note}", flush=True)
    engine.train()
    batches = iter(loader)
    with MetricsWriter(run.metrics_path, total=steps, initial=start, enabled=rank0, desc=stage.name) as writer:
        for step in range(start, steps):
            last_good = str(result.checkpoint) if result.checkpoint else "none in this stage yet"
            metrics = train_step(engine, batches, stage, step, last_good)
            writer.write(metrics)
            result.losses.append(metrics.loss)
            result.steps_done = step + 1
            every = run.checkpoint_every
            if result.steps_done == steps or (every and result.steps_done % every == 0):
                result.checkpoint = checkpoint.save(
                    engine,
                    ckpt_dir,
                    result.steps_done,
                    stage_index=run.index,
                    loader_state=loader.state_dict(),
                    keep_last=run.keep_last,
                )
    checkpoint.release(engine, model, plain)
    return result
