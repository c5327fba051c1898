"""The standard VLM benchmarks as data: readers of their native files, prompt recipes, and their official scorers.

`BENCHMARKS` (name → `Benchmark`) is the table; `read_items` asks a benchmark for its questions under a data root,
`Benchmark.score` scores an answers map, `score_answers` an answers file. No torch here: `train eval` runs a model
on the items, `train score` and `mixer` (decontamination, reports) use the same readers and scorers without one.
The files each benchmark expects: docs/eval.md.
"""

from __future__ import annotations

from mixer.evals.answers import question_rows, read_answers, score_answers, sha256_file, write_jsonl
from mixer.evals.spec import Benchmark, BenchmarkError, EvalOptions, Item
from mixer.evals.table import BENCHMARKS, benchmark_root, get_benchmark, parse_benchmarks, read_items

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkError",
    "EvalOptions",
    "Item",
    "benchmark_root",
    "get_benchmark",
    "parse_benchmarks",
    "question_rows",
    "read_answers",
    "read_items",
    "score_answers",
    "sha256_file",
    "write_jsonl",
]
