"""The demo's CLIP tower: tags read from the corpus's captions, trained on its captioned images, saved as a 🤗 CLIP
vision tower, reproducibly."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPVisionModel

from mixer.demo import write_demo_corpus
from mixer.demo.corpus import COUNTS
from mixer.demo.scenes import Scene, Shape, caption
from mixer.demo.tower import TAGS, VISION, caption_pairs, caption_tags, tag_targets, train_tower

BASE_URL = "http://127.0.0.1:9"  # written into the corpus, never fetched: the tower reads the files

SCENE = Scene(
    320,
    240,
    "grey",
    (Shape("circle", "red", "left", (40, 100, 88, 148)), Shape("square", "blue", "top", (136, 24, 184, 72))),
)


def test_every_caption_style_gives_the_scene_s_tags() -> None:
    expected = ["red circle", "circle left", "red left", "blue square", "square top", "blue top", "two shapes"]
    for style in ("laion", "cc3m", "cc12m", "sbu"):
        assert caption_tags(caption(SCENE, style)) == expected, style
    assert caption_tags("") == [] and caption_tags("a dog on the grass") == []
    targets = tag_targets([caption(SCENE, "laion"), ""])
    assert targets.shape == (2, len(TAGS)) and len(TAGS) == 18 + 15 + 30 + 3
    assert {TAGS[i] for i in targets[0].nonzero().flatten().tolist()} == set(expected)
    assert targets[1].sum() == 0


def test_tower_trains_on_the_captioned_images_and_loads_as_a_clip_tower(tmp_path: Path) -> None:
    data = tmp_path / "data"
    summary = write_demo_corpus(data, BASE_URL, seed=0, scale=0.02)
    pairs = caption_pairs(data, BASE_URL, VISION["image_size"])
    # every row of the four caption families but the planted faults (HTML page, 404, empty caption, ftp URL)
    families = ("laion", "cc3m", "cc12m", "sbu")
    assert len(pairs) == sum(summary["counts"][f] for f in families) - 4
    assert sum(summary["counts"][f] for f in families) == sum(max(1, round(COUNTS[f] * 0.02)) for f in families)
    assert all(p.shape == (3, 64, 64) for p, _ in pairs)
    assert all(caption_tags(t) for _, t in pairs)

    runs = []
    for name in ("a", "b"):
        info = train_tower(data, tmp_path / name, base_url=BASE_URL, steps=4, batch=8)
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
