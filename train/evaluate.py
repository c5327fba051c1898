"""Held-out evaluation: exact-match accuracy of greedy answers to VQA / OCR questions, per source.

The prompt is the stage template's rendering of one user turn (image + question) up to where the assistant's answer
starts; the model's greedy continuation, cut at EOS, is compared with the reference after light normalisation
(case, surrounding space and final punctuation), as VQA exact-match scoring does.
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
) -> dict[str, Any]:
    """{"accuracy", "n", "by_source": {source: accuracy}, "examples": first few (question, reference, answer)}."""
    was_training = vlm.training
    vlm.eval()
    n_img = vlm.n_image_tokens(image_size)
    hits: dict[str, list[bool]] = defaultdict(list)
    examples = []
    for item in items:
        ids = torch.tensor([prompt_ids(tokenizer, template, item, n_img)])
        pixels = preprocess(Path(item.image).read_bytes(), image_size, mean_std)[None]
        out = vlm.generate(pixels, ids, max_new_tokens)[0].tolist()
        answer = tokenizer.decode(out, skip_special_tokens=True)
        hits[item.source].append(normalise(answer) == normalise(item.answer))
        if len(examples) < 5:
            examples.append({"question": item.question, "reference": item.answer, "answer": answer.strip()})
    vlm.train(was_training)
    flat = [h for v in hits.values() for h in v]
    return {
        "accuracy": sum(flat) / len(flat) if flat else 0.0,
        "n": len(flat),
        "by_source": {s: sum(v) / len(v) for s, v in sorted(hits.items())},
        "examples": examples,
    }
