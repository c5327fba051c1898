"""The manifest root: a whole tinymix project in one typed model."""

from __future__ import annotations

from pydantic import Field

from mixer.manifest.evals import EvalSettings
from mixer.manifest.model import ModelConfig
from mixer.manifest.runtime import AblationConfig, DeepSpeedSettings
from mixer.manifest.sources import SourceConfig
from mixer.manifest.stages import StageConfig
from shards.options import ShardOptions, Strict


class Manifest(Strict):
    """Sources, shard options, the model, the training stages, DeepSpeed and ablation sweeps."""

    extends: str | None = Field(
        None, description="A manifest this one derives from (merged underneath; lists replace)."
    )
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Project name.")
    output: str = Field(description="Build and run folder (relative to the manifest), or an fsspec URL.")
    seed: int = Field(0, description="Seed of plans, initialisation and sweeps.")
    data_root: str = Field(".", description="Folder that source paths are relative to (relative to the manifest).")
    sources: dict[str, SourceConfig] = Field(min_length=1, description="Source name → dataset.")
    shards: ShardOptions = Field(default_factory=ShardOptions)
    model: ModelConfig
    stages: list[StageConfig] = Field(min_length=1, description="Training stages, in order.")
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    ablations: dict[str, AblationConfig] = Field(default_factory=dict, description="Named mixture sweeps.")
    eval: EvalSettings | None = Field(None, description="Standard benchmarks run after each stage (docs/eval.md).")

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(s.name for s in self.stages)}")
