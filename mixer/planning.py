"""Manifest stage + length index → a stored stage plan (`OUT/stages/<stage>/plan/`) and its contract (`stage.json`).

The manifest and file side of one stage's plan; the algorithm is `mixer.plan`, the whole build `mixer.build`.
`plan_stage_at` is the one way to plan: the manifest's stages (`plan_one`) and ablation proxies (another mixture,
held-out rows excluded, another folder) both come through it, and both get a `mixer.contract.StageContract` that
names where the shards are. OUT may be a local folder or an fsspec URL (`s3://bucket/run`).

The stage's size becomes the planner's: steps × global_batch sequences, a token budget, or epochs × the tokens of
the mixture's sources. Samples whose tokenisation failed carry length 0 in the index; here they become overlong
with no cut point, so the planner drops and counts them instead of placing empty segments.

Two build-time refusals, so that `train launch` never meets them: a stage whose plan would hold no sequence (its
sources are empty, or every sample was dropped) is a `PlanError`, and so is a plan estimated past `PLAN_BYTES_BOUND`
unless the caller confirmed it (`mixer build --yes`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from mixer.contract import CONTRACT, StageContract, contract_path, stage_folder, steps_of
from mixer.lengths import read_lengths
from mixer.manifest import Manifest, ModelConfig, StageConfig
from mixer.plan import PlanSpec, PlanSummary, SourceInput, plan_stage
from mixer.plan.planner import SEGMENT_DTYPE
from shards import fs
from shards.build import source_dir

UNUSABLE = np.iinfo(np.int32).max
PLAN_BYTES_BOUND = 2**30  # a stored plan past this asks for confirmation: usually `steps` with a few zeros too many
SEQUENCE_BYTES = 8  # one int64 offset per sequence in chunks/*.sequences.npy


class PlanError(ValueError):
    """A stage that cannot be planned as declared; the message starts with `stages[i] (name):`."""


def plan_bytes(stage: StageConfig, inputs: list[SourceInput] | None = None) -> int:
    """Estimated size of the stored plan: sequences × (an offset + one segment row per sample packed in it).

    Without `inputs` (before the length index exists) a packed sequence counts one segment: a lower bound, and an
    `epochs` stage counts nothing (its size is a multiple of the data, not a number typed in the manifest).
    """
    stats = [usable_stats(s.lengths) for s in inputs or []]
    count, tokens = sum(c for c, _ in stats), sum(t for _, t in stats)
    mean = tokens / count if count else float(stage.seq_len)
    if stage.size.tokens is not None:
        sequences = -(-stage.size.tokens // stage.seq_len)
    elif stage.size.steps is not None:
        sequences = stage.size.steps * (stage.global_batch or 1)
    else:
        sequences = int((stage.size.epochs or 1.0) * tokens / stage.seq_len)
    per_sequence = max(1.0, stage.seq_len / max(mean, 1.0)) if stage.packing else 1.0
    return int(sequences * (SEQUENCE_BYTES + SEGMENT_DTYPE.itemsize * per_sequence))


def plan_size_problem(
    stage: StageConfig, index: int, bound: int | None, inputs: list[SourceInput] | None = None
) -> str | None:
    """`stages[i] (name): …` when the stage's plan is estimated past `bound` bytes (None: no bound), else None."""
    size = plan_bytes(stage, inputs)
    if bound is None or size <= bound:
        return None
    return (
        f"stages[{index}] ({stage.name}): its plan would take {'about' if inputs else 'at least'} "
        f"{size / 2**30:.1f} GiB on disk (more than {bound / 2**30:.1f} GiB): check size; rerun with --yes to write it"
    )


def _empty_stage(stage: StageConfig, index: int, inputs: list[SourceInput], summary: PlanSummary | None) -> str:
    parts = []
    for i, s in enumerate(inputs):
        usable = usable_stats(s.lengths)[0]
        dropped = (
            f", {summary.dropped[i]} dropped (longer than seq_len {stage.seq_len} with no cut point)" if summary else ""
        )
        parts.append(f"{s.name} {len(s.lengths)} samples ({usable} tokenised{dropped})")
    return f"stages[{index}] ({stage.name}): the plan has 0 sequences: {'; '.join(parts)}"


def stage_seed(seed: int, stage: str) -> int:
    """A per-stage seed derived from the manifest's, so stages do not share one order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:4], "little") & 0x7FFFFFFF


class UsableLengths:
    """A source's length column as the planner reads it: 0 (a failed tokenisation) reads as UNUSABLE.

    So such a sample is dropped and counted. With `max_images` (the stage's cap) and the source's `images` column,
    a sample with more images reads as UNUSABLE too, and `over_max_images` counts them; so do rows in `exclude` (an
    ablation's held-out slice): they never enter the plan. Rows are converted as they are read: a memory-mapped
    column (`read_lengths`) is never copied whole, and planning holds the pages it touches, not the source.
    """

    ndim = 1

    def __init__(
        self,
        raw: np.ndarray,
        images: np.ndarray | None = None,
        max_images: int | None = None,
        exclude: range | None = None,
    ) -> None:
        self.raw = raw
        self.images = images if max_images is not None else None
        self.max_images = max_images
        self.exclude = exclude if exclude is not None and len(exclude) else None

    def __len__(self) -> int:
        return len(self.raw)

    def _usable(self, i: Any) -> np.ndarray:
        """Lengths of rows `i` with every left-out row read as 0."""
        v = np.asarray(self.raw[i])
        if self.images is not None:
            v = np.where(np.asarray(self.images[i]) <= self.max_images, v, 0)
        if self.exclude is not None:
            rows = np.arange(*i.indices(len(self.raw))) if isinstance(i, slice) else np.asarray(i) % len(self.raw)
            v = np.where((rows < self.exclude.start) | (rows >= self.exclude.stop), v, 0)
        return v

    def __getitem__(self, i: Any) -> np.ndarray:
        v = self._usable(i)
        return np.where(v > 0, v, UNUSABLE).astype(np.int32)

    def _chunks(self, chunk: int) -> Any:
        for i in range(0, len(self.raw), chunk):
            yield self._usable(slice(i, i + chunk))

    def usable_tokens(self, chunk: int = 1 << 22) -> int:
        """Total tokens of the usable samples, a chunk at a time."""
        return sum(int(v.sum(dtype=np.int64)) for v in self._chunks(chunk))

    def usable_count(self, chunk: int = 1 << 22) -> int:
        """How many samples are usable (tokenised, within the image cap, not excluded), a chunk at a time."""
        return sum(int((v > 0).sum()) for v in self._chunks(chunk))

    def over_max_images(self, chunk: int = 1 << 22) -> int:
        """How many tokenised samples the stage's `max_images` leaves out (0 without a cap)."""
        if self.images is None:
            return 0
        return sum(
            int(
                (
                    (np.asarray(self.raw[i : i + chunk]) > 0)
                    & (np.asarray(self.images[i : i + chunk]) > self.max_images)
                ).sum()
            )
            for i in range(0, len(self.raw), chunk)
        )


class CapTurnEnds:
    """A source's turn-end values with the cut points of samples over `max_images` hidden.

    The planner cuts an overlong sample at a turn end (`mixer.plan.order`); a sample the stage leaves out must not be
    cut and placed instead, so the slice of its turn ends reads empty. Only the slices the planner asks for are
    looked at (one binary search in the offsets each), so a memory-mapped column is never copied.
    """

    def __init__(self, offsets: np.ndarray, values: np.ndarray, images: np.ndarray, max_images: int) -> None:
        self.offsets, self.values, self.images, self.max_images = offsets, values, images, max_images

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: Any) -> np.ndarray:
        if isinstance(i, slice) and i.start is not None and i.stop is not None and i.stop > i.start:
            # the sample whose turn ends start at i.start: the last offset <= i.start (empty ones come before it)
            sample = int(np.searchsorted(self.offsets, i.start, side="right")) - 1
            if int(self.images[sample]) > self.max_images:
                return np.asarray(self.values[i.start : i.start])
        return np.asarray(self.values[i])


def held_out_rows(n: int, eval_samples: int) -> range:
    """An ablation's held-out slice of a source of `n` samples: its last min(eval_samples, n // 10) rows.

    At least one row when n > 1. Proxy plans exclude these rows (`plan_stage_at(exclude=...)`), so every variant
    is scored on the same unseen samples.
    """
    k = min(eval_samples, max(1, n // 10)) if n > 1 else 0
    return range(n - k, n)


def usable_stats(lengths: Any) -> tuple[int, int]:
    """(samples, tokens) of the tokenised samples of a length column: `UsableLengths` or an array with UNUSABLE."""
    if isinstance(lengths, UsableLengths):
        return lengths.usable_count(), lengths.usable_tokens()
    usable = np.asarray(lengths)
    usable = usable[usable < UNUSABLE]
    return len(usable), int(usable.sum(dtype=np.int64))


def stage_inputs(
    m: Manifest, stage: StageConfig, lengths: dict[str, str], exclude: dict[str, range] | None = None
) -> list[SourceInput]:
    """The planner's inputs of `stage`'s mixture: each source's length index, without the rows in `exclude`."""
    inputs = []
    for name, weight in stage.mixture.items():
        raw, ends, images = read_lengths(lengths[name])
        rows = (exclude or {}).get(name)
        if rows is not None and len(rows):
            # An excluded row must offer no cut point either, or the planner would truncate it into the plan.
            offsets, values = ends
            values = np.array(values)  # a copy, only for a stage with excluded rows (an ablation proxy)
            values[int(offsets[rows.start]) : int(offsets[rows.stop])] = 0
            ends = (offsets, values)
        lens = UsableLengths(raw, images, stage.max_images, rows)
        if stage.max_images is not None:
            ends = (ends[0], CapTurnEnds(ends[0], ends[1], images, stage.max_images))  # type: ignore[assignment]
        inputs.append(
            SourceInput(
                name=name,
                weight=weight,
                lengths=lens,
                turn_ends=ends,
                images=images,
                max_epochs=m.sources[name].max_epochs,
            )
        )
    return inputs


def stage_spec(m: Manifest, stage: StageConfig, inputs: list[SourceInput], seed: int | None = None) -> PlanSpec:
    """The planner's spec of `stage`: its size, packing and window; seed derived from the manifest's unless given.

    With `packing: budget` a planned sequence is a whole micro batch (`micro_batch` rows' tokens).
    """
    rows = stage.bin_rows
    size: dict[str, int] = {}
    steps = stage.steps()
    if stage.size.tokens is not None:
        size["num_tokens"] = stage.size.tokens
    elif steps is not None:
        size["num_sequences"] = steps * (stage.global_batch or 1) // rows
    else:
        usable = sum(s.lengths.usable_tokens() for s in inputs)  # type: ignore[attr-defined]
        size["num_tokens"] = max(1, int(round((stage.size.epochs or 1.0) * usable)))
    return PlanSpec(
        seq_len=stage.seq_len,
        weight_by=stage.weight_by,
        seed=stage_seed(m.seed, stage.name) if seed is None else seed,
        window=stage.window // rows,
        packing=bool(stage.packing),
        bin_rows=rows,
        **size,
    )


def plan_dir(out: str, stage: str) -> str:
    """`OUT/stages/<stage>/plan`: the stored plan of a stage."""
    return fs.join(stage_folder(out, stage), "plan")


def stage_contract(
    stage: StageConfig,
    model: ModelConfig,
    shards: dict[str, str],
    lengths: dict[str, str],
    num_sequences: int,
    index: int = 0,
    over_max_images: dict[str, int] | None = None,
) -> StageContract:
    """What `stage.json` tells the loader and the trainer, as a `StageContract`.

    Sources in plan order and where their data is, tokenisation, image handling (the tower's mean and std, fixed
    here once) and the batch layout with its step count.
    """
    from mixer.loader.images import mean_std  # torch: only when a stage is planned

    mean, std = mean_std(model.vision.model_type)
    global_batch = stage.global_batch or stage.micro_batch
    steps, leftover = steps_of(num_sequences, sequences_per_step(stage))
    return StageContract(
        stage=stage.name,
        index=index,
        sources=tuple(stage.mixture),
        shards={s: shards[s] for s in stage.mixture},
        lengths={s: lengths[s] for s in stage.mixture},
        tokenizer=model.tokenizer_path(),
        template=stage.template,
        image_size=stage.image_size,
        image_preprocess=stage.image_preprocess,
        image_tokens=model.image_tokens_for(stage.image_size),
        vision_model_type=model.vision.model_type,
        mean=mean,
        std=std,
        seq_len=stage.seq_len,
        window=stage.window,
        num_sequences=num_sequences,
        global_batch=global_batch,
        micro_batch=stage.micro_batch,
        bin_rows=stage.bin_rows,
        steps=steps,
        leftover_sequences=leftover,
        verify=stage.verify,
        max_images=stage.max_images,
        over_max_images=over_max_images or {},
    )


def plan_stage_at(
    m: Manifest,
    stage: StageConfig,
    out: str,
    lengths: dict[str, str],
    *,
    folder: str | None = None,
    index: int = 0,
    mixture: dict[str, float] | None = None,
    exclude: dict[str, range] | None = None,
    model: ModelConfig | None = None,
    seed: int | None = None,
    max_bytes: int | None = None,
    progress: bool = False,
) -> tuple[PlanSummary, StageContract]:
    """Plan `stage` and write its plan and contract to `folder` (default OUT/stages/<name>): the one way to plan.

    Stages and ablation proxies both come here. `mixture` replaces the stage's, `exclude` keeps source rows out of
    the plan (a proxy's held-out slices), `model` tokenises for another model than the manifest's, `seed` replaces
    the per-stage seed. The shards are OUT's (`OUT/sources/<source>`), named in the contract wherever `folder` is.
    `progress`: a bar with an ETA over the stage's windows (`mixer build` shows it).

    A stage with no sequence, or a plan estimated past `max_bytes` (None: no bound), is a `PlanError`; the
    contract is then absent, so no loader mistakes the folder for a plan.
    """
    if mixture is not None:
        stage = StageConfig.model_validate({**stage.model_dump(), "mixture": mixture})
    folder = folder or stage_folder(out, stage.name)
    inputs = stage_inputs(m, stage, lengths, exclude)
    meta_path = fs.join(folder, CONTRACT)
    if not any(usable_stats(s.lengths)[0] for s in inputs):
        _forget(meta_path)
        raise PlanError(_empty_stage(stage, index, inputs, None))
    too_large = plan_size_problem(stage, index, max_bytes, inputs)
    if too_large:
        raise PlanError(too_large)
    bar = f"plan {stage.name}" if progress else None
    summary = plan_stage(inputs, stage_spec(m, stage, inputs, seed), fs.join(folder, "plan"), progress=bar)
    if summary.num_sequences == 0:
        _forget(meta_path)
        raise PlanError(_empty_stage(stage, index, inputs, summary))
    shards = {s: source_dir(str(out), s) for s in stage.mixture}
    over = {s.name: s.lengths.over_max_images() for s in inputs} if stage.max_images is not None else None  # type: ignore[attr-defined]
    contract = stage_contract(stage, model or m.model, shards, lengths, summary.num_sequences, index, over)
    contract.write(meta_path)
    return summary, contract


def sequences_per_step(stage: StageConfig) -> int:
    """Planned sequences one optimizer step takes: global_batch rows, or its micro batches under `packing: budget`."""
    return (stage.global_batch or stage.micro_batch) // stage.bin_rows


def plan_line(name: str, summary: PlanSummary, per_step: int) -> str:
    """What `mixer build` prints per stage: sequences, the contract's steps and leftover sequences, packing.

    `per_step`: planned sequences per optimizer step (`sequences_per_step`).
    """
    steps, leftover = steps_of(summary.num_sequences, per_step)
    return (
        f"stage {name}: {summary.num_sequences} sequences, {steps} steps ({leftover} leftover sequences dropped), "
        f"packing {summary.packing_efficiency:.2%}, worst window deviation {summary.worst_window_deviation_pp:.2f} pp"
    )


def plan_one(
    m: Manifest,
    index: int,
    out: str,
    lengths: dict[str, str],
    max_bytes: int | None = None,
    progress: bool = False,
) -> PlanSummary:
    """Plan the manifest's stage `index` into OUT/stages/<name>/ (`plan_stage_at`)."""
    return plan_stage_at(m, m.stages[index], out, lengths, index=index, max_bytes=max_bytes, progress=progress)[0]


def missing_plan(out: str, stages: list[str]) -> str | None:
    """The first file a planned stage needs that is absent (stage.json, then the plan's summary.json), or None."""
    for name in stages:
        for path in (contract_path(out, name), fs.join(plan_dir(out, name), "summary.json")):
            if not fs.exists(path):
                return path
    return None


def _forget(meta_path: str) -> None:
    fs.remove(meta_path)  # an older build's stage.json must not describe a plan that is no longer there
