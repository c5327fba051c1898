"""`StageContract`: what a planned stage hands the trainer, written once by planning as `stage.json`, read by both.

The loader and the trainer read a stage only through this model: where each source's shards and length index are,
how samples are tokenised and images prepared (size, crop or pad, the tower's mean and std), and the batch layout.
The step count is fixed here, once: `steps = num_sequences // (global_batch / bin_rows)`, and the `leftover_sequences`
past the last whole global batch are planned but never trained on (`mixer build` and `mixer inspect` say how many).
Under `packing: budget` a planned sequence is a whole micro batch (`bin_rows = micro_batch` rows' tokens).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shards import fs

CONTRACT = "stage.json"
RGB = tuple[float, float, float]
MeanStd = tuple[RGB, RGB]


def steps_of(num_sequences: int, global_batch: int) -> tuple[int, int]:
    """(optimizer steps, leftover sequences) of a plan: whole global batches, and the sequences past the last one."""
    steps = num_sequences // global_batch
    return steps, num_sequences - steps * global_batch


def stage_folder(out: str, stage: str) -> str:
    """`OUT/stages/<stage>`: a planned stage's folder (its contract and `plan/`), a local path or an fsspec URL."""
    return fs.join(str(out), "stages", stage)


def contract_path(out: str, stage: str) -> str:
    return fs.join(stage_folder(out, stage), CONTRACT)


class StageContract(BaseModel):
    """A planned stage as the loader and the trainer see it; validated when read, immutable after."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str = Field(description="The stage's name.")
    index: int = Field(0, ge=0, description="Position of the stage in the manifest (0-based).")
    sources: tuple[str, ...] = Field(min_length=1, description="Source names in plan order (a segment's `source`).")
    shards: dict[str, str] = Field(description="Source -> folder (or URL) of its shards and index.parquet.")
    lengths: dict[str, str] = Field(description="Source -> merged length index URL (tokens stored beside it).")
    tokenizer: str = Field(description="Tokenizer folder or hub name.")
    template: str = Field(description="Chat template name.")
    image_size: int = Field(gt=0, description="Square side of the images fed to the tower.")
    image_preprocess: str = Field(description="'crop' or 'pad': how an image is fitted to image_size.")
    image_tokens: int = Field(ge=0, description="LM positions one image takes.")
    vision_model_type: str = Field(description="The tower's 🤗 model_type.")
    mean: RGB = Field(description="Per-channel pixel mean of the tower.")
    std: RGB = Field(description="Per-channel pixel std of the tower.")
    seq_len: int = Field(gt=0, description="Tokens per packed sequence.")
    window: int = Field(gt=0, description="Sequences per planning window.")
    num_sequences: int = Field(gt=0, description="Packed sequences in the plan.")
    global_batch: int = Field(gt=0, description="Sequences per optimizer step over all ranks.")
    micro_batch: int = Field(gt=0, description="Sequences per rank per forward pass.")
    bin_rows: int = Field(1, ge=1, description="Rows per planned sequence: 1, or micro_batch under packing: budget.")
    steps: int = Field(ge=0, description="Optimizer steps: num_sequences // (global_batch / bin_rows).")
    leftover_sequences: int = Field(ge=0, description="Planned sequences past the last whole global batch (unused).")
    verify: bool = Field(True, description="The loader checks each member read against the index's crc32.")
    max_images: int | None = Field(None, gt=0, description="The stage's cap on images per sample (None: no cap).")
    over_max_images: dict[str, int] = Field(
        default_factory=dict, description="Source -> tokenised samples left out by max_images."
    )

    @model_validator(mode="after")
    def _consistent(self) -> StageContract:
        if set(self.shards) != set(self.sources) or set(self.lengths) != set(self.sources):
            raise ValueError("shards and lengths must name exactly the stage's sources")
        if self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of micro_batch {self.micro_batch}")
        if self.bin_rows not in (1, self.micro_batch):
            raise ValueError(f"bin_rows {self.bin_rows}: must be 1 or micro_batch ({self.micro_batch})")
        if (self.steps, self.leftover_sequences) != steps_of(self.num_sequences, self.sequences_per_step):
            raise ValueError(
                f"steps {self.steps} and leftover_sequences {self.leftover_sequences} do not follow from "
                f"num_sequences {self.num_sequences}, global_batch {self.global_batch} and bin_rows {self.bin_rows}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"std {self.std}: must be positive")
        return self

    @property
    def sequences_per_step(self) -> int:
        """Planned sequences one optimizer step takes: global_batch rows, or its micro batches under budget packing."""
        return self.global_batch // self.bin_rows

    @property
    def mean_std(self) -> MeanStd:
        return self.mean, self.std

    def write(self, path: str) -> None:
        """Write to `path`; local shard and length locations relative to its folder, so a build folder can move."""
        fs.put_bytes(path, (self._located(path, relative_location).model_dump_json(indent=2) + "\n").encode())

    def _located(self, path: str, how: Callable[[str, str], str]) -> StageContract:
        """The contract with each local location passed through `how(location, folder of path)`."""
        if "://" in path:
            return self
        folder = os.path.dirname(os.path.abspath(path))
        return self.model_copy(
            update={
                "shards": {k: how(v, folder) for k, v in self.shards.items()},
                "lengths": {k: how(v, folder) for k, v in self.lengths.items()},
            }
        )

    @classmethod
    def read(cls, out: str, stage: str) -> StageContract:
        """OUT/stages/<stage>/stage.json, validated; a missing or malformed file is one message naming it."""
        return cls.read_file(contract_path(out, stage), stage)

    @classmethod
    def read_file(cls, path: str, stage: str = "") -> StageContract:
        if not fs.exists(path):
            raise FileNotFoundError(f"{path}: no such stage plan; run `mixer build` for stage {stage!r} first")
        try:
            return cls.model_validate_json(fs.read_bytes(path))._located(path, absolute_location)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise ValueError(f"{path}: {where}: {err['msg']} (rerun `mixer build` to rewrite it)") from None


def relative_location(location: str, folder: str) -> str:
    return location if "://" in location else os.path.relpath(os.path.abspath(location), folder)


def absolute_location(location: str, folder: str) -> str:
    return location if "://" in location else os.path.normpath(os.path.join(folder, location))
