"""Held-out evaluation items: one question (or caption) each, with its image, reference answer, source and task.

The demo corpus writes them (`eval/eval.json`); `train` evaluates models on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class EvalItem:
    """One held-out question (or caption) in `eval/eval.json`.

    `image` is relative to the `eval/` folder in the file (absolute once loaded). `question` is the first user turn
    without the `<image>` placeholder ("" for caption items: the caption is expected right after the image).
    `answer` is the reference for exact match (TextVQA: the most common of its ten answers).
    """

    id: str
    source: str
    task: str
    image: str
    question: str
    answer: str


def load_items(path: str | Path, sources: list[str] | None = None) -> list[EvalItem]:
    """The question items of an eval list (`[{id, source, task, image, question, answer}]`, image relative to it)."""
    root = Path(path).parent
    items = [
        EvalItem(**{**raw, "image": str(root / raw["image"])})
        for raw in json.loads(Path(path).read_text(encoding="utf-8"))
        if raw.get("question")
    ]
    return [i for i in items if sources is None or i.source in sources]
