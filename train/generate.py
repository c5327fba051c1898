"""`train generate`: load an export folder, render the prompt with the template it was trained with, answer greedily."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mixer.loader.images import check_mean_std, mean_std, preprocess
from train.evaluate import EvalItem, prompt_ids
from train.model.export import EXPORT_JSON, load_export


def answer(export: str | Path, image: str | Path, prompt: str, max_new_tokens: int = 32) -> str:
    meta = json.loads((Path(export) / EXPORT_JSON).read_text())
    template = meta.get("template", "llava_v1")
    norm = check_mean_std(meta["mean_std"]) if meta.get("mean_std") else mean_std("clip_vision_model")
    vlm, tokenizer = load_export(export)
    size = int(meta["image_size"])
    item = EvalItem(id="prompt", source="", task=meta.get("task", "vqa"), image=str(image), question=prompt, answer="")
    ids = torch.tensor([prompt_ids(tokenizer, template, item, vlm.n_image_tokens(size))])
    pixels = preprocess(Path(image).read_bytes(), size, norm)[None]
    with torch.no_grad():
        out = vlm.generate(pixels, ids, max_new_tokens)[0].tolist()
    return tokenizer.decode(out, skip_special_tokens=True).strip()
