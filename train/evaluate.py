"""Held-out evaluation: exact-match accuracy of greedy answers to VQA / OCR questions, per source.

The prompt is the stage template's rendering of one user turn (image + question) up to where the assistant's answer
starts; the model's greedy continuation (batched, `train.evals.engine`), cut at EOS, is compared with the reference
after light normalisation (case, surrounding space and final punctuation). This is the demo's and the ablation
proxies' quick check on their own sources' held-out rows; the standard benchmarks with their official rules are
`train.evals` / `mixer.evals`.
"""

from __future__ import annotations

import string
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from mixer.batch import IGNORE_INDEX
from mixer.evalset import EvalItem
from mixer.loader.images import preprocess
from mixer.templates import encode
from train.evals.engine import generate
from train.evals.model import from_vlm

__all__ = ["EvalItem", "evaluate", "normalise", "prompt_ids"]


def normalise(text: str) -> str:
    return text.strip().lower().rstrip(string.punctuation).strip()


def prompt_ids(tokenizer: Any, template: str, item: EvalItem, n_image_tokens: int) -> list[int]:
    """Token ids of the prompt: everything the template puts before the assistant's first labelled token."""
    # any answer text will do: only the prompt before it is kept
    answer = item.answer or "."
    conv = [{"role": "user", "content": f"<image>\n{item.question}"}, {"role": "assistant", "content": answer}]
    enc = encode(conv, tokenizer, template, n_image_tokens, task=item.task, key=item.id)
    first = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    return enc.input_ids[:first]


@torch.no_grad()
def evaluate(
    vlm: Any,
    tokenizer: Any,
    items: list[EvalItem],
    *,
    template: str,
    image_size: int,
    mean_std: tuple,
    max_new_tokens: int = 12,
    batch: int = 16,
) -> dict[str, Any]:
    """{"accuracy", "n", "by_source": {source: accuracy}, "examples": first few (question, reference, answer)}."""
    was_training = vlm.training
    model = from_vlm(vlm, tokenizer, template, image_size, mean_std)
    n_img = model.n_image_tokens
    answers: list[str] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        prompts = [prompt_ids(tokenizer, template, i, n_img) for i in chunk]
        pixels = torch.stack([preprocess(Path(i.image).read_bytes(), image_size, mean_std) for i in chunk])
        pixels = pixels.to(model.device)
        for ids in generate(model, prompts, pixels, max_new_tokens):
            answers.append(tokenizer.decode(ids, skip_special_tokens=True))
    vlm.train(was_training)
    hits: dict[str, list[bool]] = defaultdict(list)
    for item, answer in zip(items, answers, strict=True):
        hits[item.source].append(normalise(answer) == normalise(item.answer))
    flat = [h for v in hits.values() for h in v]
    examples = [
        {"question": i.question, "reference": i.answer, "answer": a.strip()}
        for i, a in zip(items[:5], answers[:5], strict=True)
    ]
    return {
        "accuracy": sum(flat) / len(flat) if flat else 0.0,
        "n": len(flat),
        "by_source": {s: sum(v) / len(v) for s, v in sorted(hits.items())},
        "examples": examples,
    }
