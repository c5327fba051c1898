"""The manifest's `deepspeed:` and `ablations:` sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from shards.options import Strict

SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are 32-bit where it matters (np.random.seed, worker seeds)


class DeepSpeedSettings(Strict):
    """ZeRO, precision and memory options — or a path to a complete DeepSpeed JSON config."""

    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage.")
    bf16: bool = Field(True, description="bf16 mixed precision (fp32 master weights).")
    gradient_checkpointing: bool = Field(True, description="Recompute LLM activations in the backward pass.")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state on the CPU.")
    offload_param: bool = Field(False, description="ZeRO-3 only: parameters on the CPU.")
    config: str | None = Field(None, description="A DeepSpeed JSON file; its settings win over the fields above.")

    @model_validator(mode="after")
    def _offload(self) -> DeepSpeedSettings:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage 3 (got {self.zero_stage})")
        return self


class GridSweep(Strict):
    """Vary one source's share over fixed values; the others keep their relative weights."""

    vary: str = Field(description="Source whose share varies.")
    shares: list[float] = Field(min_length=1, description="Shares of that source, each in (0, 1).")

    @model_validator(mode="after")
    def _shares(self) -> GridSweep:
        bad = [s for s in self.shares if not 0 < s < 1]
        if bad:
            raise ValueError(f"shares must be in (0, 1); got {bad}")
        return self


class RandomSweep(Strict):
    """N mixtures drawn from a Dirichlet centred on the declared shares (RegMix-style)."""

    n: int = Field(gt=1, description="Number of variants.")
    concentration: float = Field(10.0, gt=0, description="Dirichlet concentration: higher stays nearer the declared.")


class ProxySettings(Strict):
    """The small, cheap run trained for each variant."""

    steps: int = Field(50, gt=0, description="Optimizer steps per variant.")
    seq_len: int | None = Field(None, gt=0, description="Override the stage's seq_len.")
    model: dict[str, Any] | None = Field(None, description="Overrides merged into `model:` for the proxy.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of every variant's plan and initialisation.")
    eval_samples: int = Field(64, gt=0, description="Held-out samples per source for evaluation.")


class AblationConfig(Strict):
    """A named sweep over one stage's mixture weights."""

    stage: str = Field(description="Name of the stage whose mixture varies.")
    grid: GridSweep | None = None
    random: RandomSweep | None = None
    proxy: ProxySettings = Field(default_factory=ProxySettings)

    @model_validator(mode="after")
    def _one_kind(self) -> AblationConfig:
        if (self.grid is None) == (self.random is None):
            raise ValueError("give exactly one of grid or random")
        return self
