"""The manifest's `sources:` section: where each dataset's native files are and how to read them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mixer.manifest.names import check_choice
from shards.options import ReaderOptions, Strict
from shards.readers import READERS

Task = Literal[
    "caption", "vqa", "ocr", "conversation", "grounding", "refer", "identify", "detection", "chart", "instruction"
]


class SourceConfig(Strict):
    """One dataset in its native layout."""

    kind: str = Field(description=f"Reader for the dataset family's native files: {', '.join(READERS)}.")
    paths: list[str] = Field(
        min_length=1,
        description="Files or globs (relative to data_root), or fsspec URLs such as s3://bucket/x.parquet.",
    )
    image_root: str | None = Field(None, description="Folder that relative image paths are joined to.")
    allow_outside_root: bool = Field(
        False, description="Read image paths that resolve (symlinks included) outside image_root; else a bad row."
    )
    task: Task | None = Field(None, description="Task tag; default by kind (captions → caption, LLaVA → conversation).")
    options: ReaderOptions = Field(default_factory=ReaderOptions)
    max_epochs: float | None = Field(
        None, gt=0, description="Cap on passes over this source in any stage; an exhausted source is reported."
    )

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        # read from the reader table at validation time: a reader added there is a valid kind, with its default task
        return check_choice(v, READERS, "source kind")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @property
    def task_tag(self) -> str:
        return self.task or READERS[self.kind].task
