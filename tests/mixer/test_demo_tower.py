"""The demo's CLIP tower: trained on the corpus's LAION-style pairs, saved as a 🤗 CLIP vision tower, reproducibly."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPVisionModel

from mixer.demo import write_demo_corpus
from mixer.demo.tower import VISION, caption_pairs, train_tower
from mixer.tokenizer import train_tokenizer

BASE_URL = "http://127.0.0.1:9"  # written into the corpus, never fetched: the tower reads the files


def test_tower_trains_on_the_captions_and_loads_as_a_clip_tower(tmp_path: Path) -> None:
    data = tmp_path / "data"
    summary = write_demo_corpus(data, BASE_URL, seed=0, scale=0.05)
    tok = train_tokenizer((data / "tokenizer_corpus.txt").read_text().splitlines(), tmp_path / "tok", vocab_size=400)
    pairs = caption_pairs(data, BASE_URL, VISION["image_size"])
    assert len(pairs) == summary["counts"]["laion"] - 1  # all but the planted HTML page
    assert all(p.shape == (3, 64, 64) for p, _ in pairs)

    runs = []
    for name in ("a", "b"):
        info = train_tower(data, tmp_path / name, tok, base_url=BASE_URL, steps=4, batch=8)
        runs.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert info["pairs"] == len(pairs) and info["first_loss"] > 0
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])

    tower = CLIPVisionModel.from_pretrained(tmp_path / "a")
    assert tower.config.model_type == "clip_vision_model"
    assert {k: getattr(tower.config, k) for k in VISION} == VISION
    untrained = CLIPVisionModel(tower.config)
    name = next(k for k in tower.state_dict() if k.endswith("patch_embedding.weight"))
    assert not torch.equal(tower.state_dict()[name], untrained.state_dict()[name])
    with torch.no_grad():
        out = tower(pixel_values=torch.stack([p for p, _ in pairs[:2]])).last_hidden_state
    assert out.shape == (2, 17, 64)
