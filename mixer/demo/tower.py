"""The demo's vision tower: a tiny CLIP trained contrastively on the demo's own image–caption pairs, saved for loading.

Real VLMs start from a pretrained CLIP / SigLIP tower; nothing can be downloaded here, and a randomly initialised
tower gives the LLM nearly the same features for every image (measured: connector outputs at cosine 0.96 across
images), so the demo model learnt its answers' priors and ignored the pixels. This trains what CLIP trains, at demo
size: 🤗 `CLIPModel` with its own contrastive loss on the LAION-style pairs of the demo corpus (the images prepared as
the build stores them: `border` resize, then the stage's side), and saves its vision half with `save_pretrained`,
which the manifest's `model.vision.name_or_path` loads like any CLIP tower. Same corpus and seed: same weights.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from PIL import UnidentifiedImageError
from tqdm import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from mixer.loader.images import CLIP_MEAN_STD, preprocess
from shards.images import ImageError, process_image
from shards.options import ImageOptions

CAPTIONS = "laion/part-00000.parquet"
# The demo tower: CLIP ViT at toy size (64 wide, 2 layers, 64 px in patches of 16: 16 patch features per image).
VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 16,
}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
MAX_TEXT = 32


def caption_pairs(data_root: Path, base_url: str, image_size: int) -> list[tuple[torch.Tensor, str]]:
    """(tower input, caption) of every LAION-style row whose image decodes, resized as the demo build stores it."""
    opts = ImageOptions(size=image_size, resize_mode="border", encode_format="png")
    pairs = []
    for row in pq.read_table(data_root / CAPTIONS, columns=["URL", "TEXT"]).to_pylist():
        path = data_root / row["URL"].removeprefix(base_url.rstrip("/") + "/")
        if not row["TEXT"] or not path.is_file():
            continue
        try:
            stored = process_image(path.read_bytes(), opts, max_pixels=10**7).data
        except (ImageError, UnidentifiedImageError, OSError):
            continue  # the corpus plants a broken image; the build skips it too
        pairs.append((preprocess(stored, image_size, CLIP_MEAN_STD), row["TEXT"]))
    return pairs


def train_tower(
    data_root: str | Path,
    out: str | Path,
    tokenizer: Any,
    *,
    base_url: str,
    steps: int = 200,
    batch: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train a tiny CLIP on the corpus's captions and save it to `out`; returns the first and last contrastive loss."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pairs = caption_pairs(Path(data_root), base_url, VISION["image_size"])
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows = []
    for caption in tokenizer([t for _, t in pairs])["input_ids"]:
        real = [t for t in caption if t not in (pad, eos)][: MAX_TEXT - 1] + [eos]  # CLIP pools at the EOS token
        rows.append(real + [pad] * (MAX_TEXT - len(real)))
    input_ids = torch.tensor(rows, dtype=torch.long)
    mask = (input_ids != pad).long()
    pixels = torch.stack([p for p, _ in pairs])
    text = TEXT | {"vocab_size": len(tokenizer), "max_position_embeddings": MAX_TEXT}
    text |= {"eos_token_id": eos, "pad_token_id": pad, "bos_token_id": tokenizer.bos_token_id or eos}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=64))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    order: list[int] = []
    model.train()
    for _ in tqdm(range(steps), desc="demo tower", unit="step", dynamic_ncols=True):
        if len(order) < batch:
            order += rng.sample(range(len(pairs)), len(pairs))
        pick, order = order[:batch], order[batch:]
        inputs = {"input_ids": input_ids[pick], "attention_mask": mask[pick], "pixel_values": pixels[pick]}
        loss = model(**inputs, return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    # Only the vision half is kept, as a CLIPVisionModel: what a VLM loads of a CLIP checkpoint.
    tower = CLIPVisionModel(model.config.vision_config)
    tower.load_state_dict(model.vision_model.state_dict())
    tower.save_pretrained(out)
    return {"pairs": len(pairs), "first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:])}
