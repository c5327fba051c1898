"""Manifest stage + length index → a stored stage plan (`OUT/stages/<stage>/plan/`) and the stage's `stage.json`.

OUT may be a local folder or an fsspec URL (`s3://bucket/run`); the plan and stage.json go there either way.

The stage's size becomes the planner's: steps × global_batch sequences, a token budget, or epochs × the tokens of
the mixture's sources. Samples whose tokenisation failed carry length 0 in the index; here they become overlong
with no cut point, so the planner drops and counts them instead of placing empty segments.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from mixer.lengths import read_lengths
from mixer.manifest import Manifest, ModelConfig, StageConfig
from mixer.plan import PlanSpec, PlanSummary, SourceInput, plan_stage
from shards import fs

UNUSABLE = np.iinfo(np.int32).max


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
        "image_tokens": model.image_tokens_for(stage.image_size),
        "tokenizer": model.tokenizer_path(),
        "vision_model_type": model.vision.model_type,
        "seq_len": stage.seq_len,
        "global_batch": stage.global_batch,
        "micro_batch": stage.micro_batch,
        "num_sequences": num_sequences,
    }


def plan_one(m: Manifest, index: int, out: str, lengths: dict[str, str]) -> PlanSummary:
    """Plan stage `index` into OUT/stages/<name>/ and record what the loader needs in stage.json."""
    stage = m.stages[index]
    inputs = stage_inputs(m, stage, lengths)
    spec = stage_spec(m, stage, inputs)
    summary = plan_stage(inputs, spec, plan_dir(out, stage.name))
    meta = stage_meta(stage, m.model, [s.name for s in inputs], summary.num_sequences)
    meta.update(index=index, lengths={s.name: lengths[s.name] for s in inputs})
    fs.put_bytes(fs.join(stage_dir(out, stage.name), "stage.json"), (json.dumps(meta, indent=2) + "\n").encode())
    return summary
