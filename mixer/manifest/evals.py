"""The manifest's `eval:` section: standard benchmarks run on the model after each stage (`train launch`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from mixer.evals.table import BENCHMARKS
from shards.options import Strict


class BenchmarkRun(Strict):
    """How one benchmark is run during training."""

    limit: int | None = Field(None, gt=0, description="Only the first N questions (a quick subset); null: all.")
    likelihood: bool = Field(False, description="Yes/no and multiple choice: rank the answers by likelihood.")


class EvalSettings(Strict):
    """Benchmarks asked after every stage (and so at the end); scores go into the stage's metrics JSONL."""

    data_root: str = Field(
        "benchmarks", description="Folder of the benchmarks' native files (docs/eval.md), relative to data_root."
    )
    benchmarks: dict[str, BenchmarkRun] = Field(
        min_length=1, description=f"Benchmark name → settings; names: {', '.join(BENCHMARKS)}."
    )
    batch: int = Field(8, gt=0, description="Questions per forward pass.")
    max_new_tokens: int = Field(16, gt=0, description="Tokens generated per answer.")
    ocr_tokens: bool = Field(False, description="TextVQA: the OCR tokens in the prompt (LLaVA's variant).")

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, value: dict[str, BenchmarkRun]) -> dict[str, BenchmarkRun]:
        unknown = [n for n in value if n not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
        return value
