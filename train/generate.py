"""`train generate`: load an export folder, render the prompt with the template it was trained with, answer greedily."""

from __future__ import annotations

from pathlib import Path

from train.evals.engine import generate
from train.evals.model import load_for_eval


def answer(export: str | Path, image: str | Path, prompt: str, max_new_tokens: int = 32) -> str:
    model = load_for_eval(export)
    pixels = model.pixels(Path(image))[None]
    out = generate(model, [model.prompt_ids(prompt)], pixels, max_new_tokens)[0]
    return model.tokenizer.decode(out, skip_special_tokens=True).strip()
