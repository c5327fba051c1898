"""Held-out evaluation: exact-match accuracy of greedy answers to VQA / OCR questions, and token loss, per source.

The prompt is the stage template's rendering of one user turn (image + question) up to where the assistant's answer
starts; the model's greedy continuation (batched, `train.evals.engine`), cut at EOS, is compared with the reference
after light normalisation (case, surrounding space and final punctuation). `evaluate` is the one answer loop of the
demo's and the ablation proxies' quick check on held-out rows; `held_out_loss` is the proxies' mean token loss on
stored samples. The standard benchmarks with their official rules are `train.evals` / `mixer.evals`.
"""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixer.batch import IGNORE_INDEX, normalize_pixels
from mixer.evalset import EvalItem
from mixer.loader.images import pixel_batch, preprocess
from mixer.loader.pack import pack_batch
from mixer.loader.samples import Loaded, SampleReader, SampleSpec
from mixer.plan import SEGMENT_DTYPE
from mixer.templates import encode
from train.evals.engine import generate
from train.evals.model import from_vlm

__all__ = ["EvalItem", "answer_key", "evaluate", "held_out_loss", "prompt_ids"]

EVAL_BATCH = 8  # held-out sequences per forward pass


def answer_key(text: str) -> str:
    """An answer as exact match compares it: stripped, lower case, trailing punctuation dropped."""
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
    images: Sequence[bytes] | None = None,
) -> dict[str, Any]:
    """{"accuracy", "n", "by_source": {source: accuracy}, "examples": first few (question, reference, answer)}.

    Each item's image is read from its `image` path, or given as encoded bytes in `images` (stored samples).
    """
    was_training = vlm.training
    model = from_vlm(vlm, tokenizer, template, image_size, mean_std)
    n_img = model.n_image_tokens
    answers: list[str] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        prompts = [prompt_ids(tokenizer, template, i, n_img) for i in chunk]
        raw = images[start : start + batch] if images is not None else [Path(i.image).read_bytes() for i in chunk]
        pixels = torch.stack([preprocess(data, image_size, mean_std) for data in raw])
        pixels = pixels.to(model.device)
        for ids in generate(model, prompts, pixels, max_new_tokens):
            answers.append(tokenizer.decode(ids, skip_special_tokens=True))
    vlm.train(was_training)
    hits: dict[str, list[bool]] = defaultdict(list)
    for item, answer in zip(items, answers, strict=True):
        hits[item.source].append(answer_key(answer) == answer_key(item.answer))
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


@torch.no_grad()
def held_out_loss(
    vlm: Any, tokenizer: Any, spec: SampleSpec, lengths: dict[str, np.ndarray], rows: dict[str, range], seq_len: int
) -> dict[str, float]:
    """Mean token loss per source of `spec` on its stored samples `rows[source]` (those that fit one sequence)."""
    vlm.eval()
    reader = SampleReader(spec, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loss: dict[str, float] = {}
    try:
        for i, source in enumerate(spec.sources):
            segs = []
            for row in rows[source]:
                n = int(lengths[source][row])
                if 0 < n <= seq_len:
                    seg = np.zeros((), dtype=SEGMENT_DTYPE)
                    seg["source"], seg["sample"], seg["tokens"], seg["truncated"] = i, row, n, False
                    got = reader.segment(seg)
                    if isinstance(got, Loaded):
                        segs.append(got)
            total, count = 0.0, 0
            for k in range(0, len(segs), EVAL_BATCH):
                chunk = segs[k : k + EVAL_BATCH]
                pixels = pixel_batch([im for x in chunk for im in x.images], spec.image_size)
                batch = pack_batch([[x.segment] for x in chunk], seq_len, pad, pixels, spec.mean_std)
                batch = normalize_pixels(batch)
                mask = batch["labels"] != IGNORE_INDEX
                total += float(vlm.per_token_loss(batch)[mask].sum())
                count += int(mask.sum())
            loss[source] = total / max(count, 1)
    finally:
        reader.close()
    return loss
