"""The manifest's `sources:` section: where each dataset's native files are and how to read them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from shards.options import ReaderOptions, Strict

ReaderKind = Literal[
    "laion-parquet",
    "cc3m-tsv",
    "cc12m-tsv",
    "sbu-json",
    "llava-json",
    "textvqa-json",
    "docvqa-json",
    "ocrvqa-json",
    "chartqa-json",
    "hf-parquet",
    "sharegpt-json",
    "alpaca-json",
    "unnatural-jsonl",
    "vqav2-json",
    "okvqa-json",
    "aokvqa-json",
    "gqa-json",
    "coco-captions-json",
    "textcaps-json",
    "ccsbu-align-json",
    "refcoco-pickle",
    "flickr30k-entities",
]
Task = Literal[
    "caption", "vqa", "ocr", "conversation", "grounding", "refer", "identify", "detection", "chart", "instruction"
]

DEFAULT_TASK: dict[str, str] = {
    "laion-parquet": "caption",
    "cc3m-tsv": "caption",
    "cc12m-tsv": "caption",
    "sbu-json": "caption",
    "llava-json": "conversation",
    "textvqa-json": "ocr",
    "docvqa-json": "ocr",
    "ocrvqa-json": "ocr",
    "chartqa-json": "chart",
    "hf-parquet": "conversation",
    "sharegpt-json": "conversation",
    "alpaca-json": "instruction",
    "unnatural-jsonl": "instruction",
    "vqav2-json": "vqa",
    "okvqa-json": "vqa",
    "aokvqa-json": "vqa",
    "gqa-json": "vqa",
    "coco-captions-json": "caption",
    "textcaps-json": "caption",
    "ccsbu-align-json": "caption",
    "refcoco-pickle": "refer",
    "flickr30k-entities": "grounding",
}


class SourceConfig(Strict):
    """One dataset in its native layout."""

    kind: ReaderKind = Field(description="Reader for the dataset family's native files.")
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

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @property
    def task_tag(self) -> str:
        return self.task or DEFAULT_TASK[self.kind]
