"""`train eval`: the benchmarks of `mixer.evals` asked of a trained model, in batches, with an eval card.

`load_for_eval` reads an export; `run_eval` answers and scores benchmarks and writes answers / scores / card;
`answer_items` is the batched engine alone (the demo and the per-stage hook call it on a model in memory).
"""

from __future__ import annotations

from train.evals.model import EvalModel, find_export, from_vlm, load_for_eval
from train.evals.run import EvalConfig, answer_items, run_eval, write_questions

__all__ = [
    "EvalConfig",
    "EvalModel",
    "answer_items",
    "find_export",
    "from_vlm",
    "load_for_eval",
    "run_eval",
    "write_questions",
]
