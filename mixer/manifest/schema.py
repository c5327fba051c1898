"""The manifest root: a whole tinymix project in one typed model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mixer.manifest.evals import EvalSettings
from mixer.manifest.model import ModelConfig
from mixer.manifest.names import check_identifier
from mixer.manifest.runtime import SEED_MAX, AblationConfig, DeepSpeedSettings
from mixer.manifest.sources import SourceConfig
from mixer.manifest.stages import StageConfig
from shards.options import ShardOptions, Strict


class Manifest(Strict):
    """Sources, shard options, the model, the training stages, DeepSpeed and ablation sweeps."""

    extends: str | None = Field(
        None, description="A manifest this one derives from (merged underneath; lists replace)."
    )
    name: str = Field(description="Project name (letters, digits, _ . -).")
    output: str = Field(
        min_length=1, description="Build and run folder (relative to the manifest), or an fsspec URL; never `/`."
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of plans, initialisation and sweeps (0 to 2**32-1).")
    data_root: str = Field(".", description="Folder that source paths are relative to (relative to the manifest).")
    sources: dict[str, SourceConfig] = Field(min_length=1, description="Source name → dataset.")
    shards: ShardOptions = Field(default_factory=ShardOptions)
    model: ModelConfig
    stages: list[StageConfig] = Field(min_length=1, description="Training stages, in order.")
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    ablations: dict[str, AblationConfig] = Field(default_factory=dict, description="Named mixture sweeps.")
    eval: EvalSettings | None = Field(None, description="Standard benchmarks run after each stage (docs/eval.md).")
    report_to: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="Step loggers of `train launch`: jsonl (always), tensorboard, wandb (offline unless WANDB_MODE).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_identifier(v, "project")

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(s.name for s in self.stages)}")
