"""Manifest stage + length index → a stored stage plan (`OUT/stages/<stage>/plan/`) and the stage's `stage.json`.

OUT may be a local folder or an fsspec URL (`s3://bucket/run`); the plan and stage.json go there either way.

The stage's size becomes the planner's: steps × global_batch sequences, a token budget, or epochs × the tokens of
the mixture's sources. Samples whose tokenisation failed carry length 0 in the index; here they become overlong
with no cut point, so the planner drops and counts them instead of placing empty segments.

Two build-time refusals, so that `train launch` never meets them: a stage whose plan would hold no sequence (its
sources are empty, or every sample was dropped) is a `PlanError`, and so is a plan estimated past `PLAN_BYTES_BOUND`
unless the caller confirmed it (`mixer build --yes`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from mixer.lengths import read_lengths
from mixer.manifest import Manifest, ModelConfig, StageConfig
from mixer.plan import PlanSpec, PlanSummary, SourceInput, plan_stage
from mixer.plan.planner import SEGMENT_DTYPE
from shards import fs

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

    So such a sample is dropped and counted. Rows are converted as they are read: a memory-mapped column
    (`read_lengths`) is never copied whole, and planning holds the pages it touches, not the source.
    """

    ndim = 1

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: Any) -> np.ndarray:
        v = np.asarray(self.raw[i])
        return np.where(v > 0, v, UNUSABLE).astype(np.int32)

    def usable_tokens(self, chunk: int = 1 << 22) -> int:
        """Total tokens of the tokenised samples, a chunk at a time."""
        return sum(int(self.raw[i : i + chunk].sum(dtype=np.int64)) for i in range(0, len(self.raw), chunk))

    def usable_count(self, chunk: int = 1 << 22) -> int:
        """How many samples were tokenised (length > 0), a chunk at a time."""
        return sum(int((np.asarray(self.raw[i : i + chunk]) > 0).sum()) for i in range(0, len(self.raw), chunk))


def usable_stats(lengths: Any) -> tuple[int, int]:
    """(samples, tokens) of the tokenised samples of a length column: `UsableLengths` or an array with UNUSABLE."""
    if isinstance(lengths, UsableLengths):
        return lengths.usable_count(), lengths.usable_tokens()
    usable = np.asarray(lengths)
    usable = usable[usable < UNUSABLE]
    return len(usable), int(usable.sum(dtype=np.int64))


def stage_inputs(m: Manifest, stage: StageConfig, lengths: dict[str, str]) -> list[SourceInput]:
    inputs = []
    for name, weight in stage.mixture.items():
        raw, ends, images = read_lengths(lengths[name])
        lens = UsableLengths(raw)
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


def stage_spec(m: Manifest, stage: StageConfig, inputs: list[SourceInput]) -> PlanSpec:
    size: dict[str, int] = {}
    steps = stage.steps()
    if stage.size.tokens is not None:
        size["num_tokens"] = stage.size.tokens
    elif steps is not None:
        size["num_sequences"] = steps * (stage.global_batch or 1)
    else:
        usable = sum(s.lengths.usable_tokens() for s in inputs)  # type: ignore[attr-defined]
        size["num_tokens"] = max(1, int(round((stage.size.epochs or 1.0) * usable)))
    return PlanSpec(
        seq_len=stage.seq_len,
        weight_by=stage.weight_by,
        seed=stage_seed(m.seed, stage.name),
        window=stage.window,
        packing=stage.packing,
        **size,
    )


def stage_dir(out: str, stage: str) -> str:
    """`OUT/stages/<stage>`, for a local build folder or an fsspec URL."""
    return fs.join(str(out), "stages", stage)


def plan_dir(out: str, stage: str) -> str:
    return fs.join(stage_dir(out, stage), "plan")


def stage_meta(stage: StageConfig, model: ModelConfig, sources: list[str], num_sequences: int) -> dict[str, Any]:
    """What `stage.json` tells the loader: sources in plan order, tokenisation, image handling and batch layout."""
    return {
        "stage": stage.name,
        "sources": sources,
        "template": stage.template,
        "image_size": stage.image_size,
        "image_preprocess": stage.image_preprocess,
        "image_tokens": model.image_tokens_for(stage.image_size),
        "tokenizer": model.tokenizer_path(),
        "vision_model_type": model.vision.model_type,
        "seq_len": stage.seq_len,
        "global_batch": stage.global_batch,
        "micro_batch": stage.micro_batch,
        "num_sequences": num_sequences,
    }


def plan_one(m: Manifest, index: int, out: str, lengths: dict[str, str], max_bytes: int | None = None) -> PlanSummary:
    """Plan stage `index` into OUT/stages/<name>/ and record what the loader needs in stage.json.

    A stage with no sequence, or a plan estimated past `max_bytes` (None: no bound), is a `PlanError`; the stage's
    stage.json is then absent, so no loader mistakes the folder for a plan.
    """
    stage = m.stages[index]
    inputs = stage_inputs(m, stage, lengths)
    meta_path = fs.join(stage_dir(out, stage.name), "stage.json")
    if not any(usable_stats(s.lengths)[0] for s in inputs):
        _forget(meta_path)
        raise PlanError(_empty_stage(stage, index, inputs, None))
    too_large = plan_size_problem(stage, index, max_bytes, inputs)
    if too_large:
        raise PlanError(too_large)
    spec = stage_spec(m, stage, inputs)
    summary = plan_stage(inputs, spec, plan_dir(out, stage.name))
    if summary.num_sequences == 0:
        _forget(meta_path)
        raise PlanError(_empty_stage(stage, index, inputs, summary))
    meta = stage_meta(stage, m.model, [s.name for s in inputs], summary.num_sequences)
    meta.update(index=index, lengths={s.name: lengths[s.name] for s in inputs})
    fs.put_bytes(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    return summary


def missing_plan(out: str, stages: list[str]) -> str | None:
    """The first file a planned stage needs that is absent (stage.json, then the plan's summary.json), or None."""
    for name in stages:
        for path in (fs.join(stage_dir(out, name), "stage.json"), fs.join(plan_dir(out, name), "summary.json")):
            if not fs.exists(path):
                return path
    return None


def _forget(meta_path: str) -> None:
    fs.remove(meta_path)  # an older build's stage.json must not describe a plan that is no longer there
