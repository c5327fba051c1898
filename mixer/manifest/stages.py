"""The manifest's `stages:` list: one training stage each, with its mixture, size, packing, template and optimiser.

Mixture semantics: `mixture` maps source names to non-negative weights, normalised to shares. With
`weight_by: tokens` a share is the fraction of the stage's *tokens* (text + image tokens, padding excluded) drawn
from that source; with `weight_by: samples` it is the fraction of samples. The planner holds each share within every
window of `window` consecutive packed sequences, not only on average over the stage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mixer.manifest.names import check_choice, check_identifier
from mixer.templates.spec import TEMPLATES
from shards.options import Strict

# What each `trains` entry selects. The one table of trainable modules: `train.freeze` implements a selector for
# each name here (and fails at import when one is missing).
TRAINABLE: dict[str, str] = {
    "connector": "the connector between the vision tower and the LLM",
    "vision": "the vision tower (from layer `vision_from` on, when given)",
    "llm": "the LLM's base weights",
    "lora": "LoRA adapters on the LLM (added when the stage starts without them)",
    "norms": "the LLM's norms (TinyGPT-V trains them with the connector)",
}


class StageSize(Strict):
    """How long a stage runs: exactly one of steps, tokens or epochs."""

    steps: int | None = Field(None, gt=0, description="Optimizer steps of global_batch sequences.")
    tokens: int | None = Field(None, gt=0, description="Planned tokens (packed slots, seq_len each sequence).")
    epochs: float | None = Field(
        None,
        gt=0,
        description=(
            "Passes over the mixture's sources: the stage plans epochs × their total tokens. Whatever the size, each "
            "source is read in epochs, each a fresh permutation: by the end of every window a source's usable samples "
            "are placed equally often give or take one, so each is placed floor(E) or ceil(E) times, E its realised "
            "epochs (samples too long to cut are dropped and counted; `mixer inspect` shows placements per sample)."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> StageSize:
        given = [k for k in ("steps", "tokens", "epochs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of steps, tokens or epochs (got {', '.join(given) or 'none'})")
        return self


class LoraSettings(Strict):
    """LoRA adapters on the LLM (peft)."""

    r: int = Field(64, gt=0, description="Rank.")
    alpha: float = Field(16, gt=0, description="Scaling numerator (alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(None, description="Module names; default per architecture.")
    merge_at_end: bool = Field(False, description="Merge into the base weights when the stage ends.")


class OptimizerSettings(Strict):
    """AdamW with linear warm-up then cosine decay to min_lr, per step."""

    lr: float = Field(gt=0, description="Peak learning rate.")
    min_lr: float = Field(0.0, ge=0, description="Learning rate at the end of the cosine.")
    warmup_steps: int | None = Field(None, ge=0, description="Linear warm-up steps.")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Warm-up as a fraction of the stage's steps.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (never on norms and biases).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    grad_clip: float | None = Field(1.0, gt=0, description="Gradient norm clip (none if null).")

    @model_validator(mode="after")
    def _warmup(self) -> OptimizerSettings:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")
        return self


class StageConfig(Strict):
    """One training stage."""

    name: str = Field(description="Stage name (a folder name in the build: letters, digits, _ . -).")
    mixture: dict[str, float] = Field(min_length=1, description="Source name → weight (normalised to shares).")
    weight_by: Literal["tokens", "samples"] = Field("tokens", description="What a share is a share of.")
    size: StageSize = Field(description="steps, tokens or epochs.")
    seq_len: int = Field(2048, gt=0, description="Tokens per packed sequence.")
    packing: bool | Literal["budget"] = Field(
        True,
        description=(
            "true: pack several samples per sequence of seq_len; false: one sample per sequence, padded; budget: "
            "pack each micro batch's whole token budget (micro_batch × seq_len tokens, no sample over seq_len) and "
            "feed it as one flattened row with cu_seq_lens, for a varlen attention (flash_attention_2/3) only: "
            "samples never see each other without a mask, where eager/SDPA would build a (micro_batch × seq_len)² "
            "one. size and window still count rows of seq_len; window must be a multiple of micro_batch."
        ),
    )
    window: int = Field(
        64,
        gt=0,
        description=(
            "Sequences per window in which shares must hold (each window within 0.4 pp where the lengths allow; "
            "a global batch, or a divisor of it, is a good choice)."
        ),
    )
    template: str = Field("llava_v1", description=f"Chat template: {', '.join(TEMPLATES)}.")
    image_size: int = Field(224, gt=0, description="Pixels fed to the vision tower in this stage.")
    image_preprocess: Literal["crop", "pad"] = Field(
        "crop",
        description="crop: shorter side to image_size, centre crop (CLIP); pad: pad to a square with the tower's "
        "mean colour, then resize (LLaVA-1.5 / TinyLLaVA image_aspect_ratio: pad).",
    )
    max_images: int | None = Field(
        None,
        gt=0,
        description="Leave out samples with more images than this (counted per source in stage.json and inspect).",
    )
    trains: list[str] = Field(
        min_length=1, description="Modules that train: " + "; ".join(f"{k}: {v}" for k, v in TRAINABLE.items()) + "."
    )
    lora: LoraSettings | None = Field(None, description="LoRA settings (required when trains has lora).")
    vision_from: int | None = Field(
        None,
        ge=0,
        description="With vision in trains: train the tower's layers from this index on (TinyLLaVA share: 12).",
    )
    vision_lr: float | None = Field(None, gt=0, description="Learning rate of the vision tower (default: the stage's).")
    optimizer: OptimizerSettings
    micro_batch: int = Field(1, gt=0, description="Packed sequences per rank per forward pass.")
    grad_accum: int | None = Field(None, gt=0, description="Micro batches per step at one rank (sets global_batch).")
    global_batch: int | None = Field(
        None, gt=0, description="Sequences per optimizer step over all ranks; grad_accum follows from the world size."
    )
    checkpoint_every: int = Field(0, ge=0, description="Save a checkpoint every N steps (0: only at the stage end).")
    verify: bool = Field(
        True,
        description="The loader checks each member it reads against the crc32 the index recorded (about 1% of its "
        "CPU per image); a mismatch is a skipped, counted, logged sample. TINYMIX_VERIFY=0 or 1 overrides every stage.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_identifier(v, "stage")

    @field_validator("mixture")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [f"{k}: weight must be >= 0 (got {w})" for k, w in v.items() if w < 0]
        if bad:
            raise ValueError("; ".join(bad))
        if sum(v.values()) <= 0:
            raise ValueError("all weights are zero: at least one must be > 0")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_choice(v, TEMPLATES, "template")

    @field_validator("trains")
    @classmethod
    def _trains(cls, v: list[str]) -> list[str]:
        for m in v:
            check_choice(m, TRAINABLE, "trainable module")
        return v

    @model_validator(mode="after")
    def _batch_and_lora(self) -> StageConfig:
        if self.global_batch is None:
            self.global_batch = self.micro_batch * (self.grad_accum or 1)
        elif self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of micro_batch {self.micro_batch}")
        elif self.grad_accum is not None and self.global_batch != self.micro_batch * self.grad_accum:
            raise ValueError("global_batch and grad_accum disagree at one rank: give one of them")
        if self.packing == "budget" and self.window % self.micro_batch:
            m = self.micro_batch
            raise ValueError(f"packing budget: window {self.window} is not a multiple of micro_batch {m}")
        if "lora" in self.trains and self.lora is None:
            self.lora = LoraSettings()
        if "lora" in self.trains and "llm" in self.trains:
            raise ValueError("trains: lora and llm together: LoRA adapts a frozen LLM; pick one")
        if (self.vision_from is not None or self.vision_lr is not None) and "vision" not in self.trains:
            raise ValueError("vision_from / vision_lr: add vision to trains")
        return self

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.mixture.values())
        return {k: w / total for k, w in self.mixture.items()}

    @property
    def bin_rows(self) -> int:
        """Rows' tokens one planned sequence holds: the whole micro batch under `packing: budget`, else one row."""
        return self.micro_batch if self.packing == "budget" else 1

    def steps(self) -> int | None:
        """Optimizer steps when the size is given in steps or tokens; None for epochs (known after indexing)."""
        assert self.global_batch is not None
        if self.size.steps is not None:
            return self.size.steps
        if self.size.tokens is not None:
            return max(1, -(-self.size.tokens // (self.seq_len * self.global_batch)))
        return None

    def warmup(self, steps: int) -> int:
        if self.optimizer.warmup_steps is not None:
            return self.optimizer.warmup_steps
        return int(round((self.optimizer.warmup_ratio or 0.0) * steps))
