"""Stored image bytes → the vision tower's input: decode, resize to the stage's side, RGB bytes (normalised later).

Two preprocessings, a stage's `image_preprocess` (table `PREPROCESS`): `crop` follows 🤗 `CLIPImageProcessor`, the
shorter side to `size` (bicubic) then a centre crop to `size`×`size`; `pad` is LLaVA-1.5's `image_aspect_ratio: pad`
(TinyLLaVA's too): `expand2square` with the tower's mean colour, then the same resize, so nothing is cut off. An
image stored at the stage's size passes through untouched. JPEGs stored at twice the size or more are decoded at a
reduced DCT scale first (`Image.draft`), as the shard builder does, so a 224 px stage reads 448 px shards cheaply.
A batch carries the bytes (`pixel_batch`) and the tower's mean/std; `mixer.batch.normalize_pixels` normalises them
where the batch is consumed. `preprocess` gives one image's normalised float input directly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mixer.batch import normalized, pixel_norm

MeanStd = tuple[tuple[float, float, float], tuple[float, float, float]]

CLIP_MEAN_STD: MeanStd = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SIGLIP_MEAN_STD: MeanStd = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Keyed by the tower's 🤗 model_type (full CLIP / SigLIP checkpoints load their vision half; EVA-CLIP keeps OpenAI's
# CLIP statistics).
NORMALISATION: dict[str, MeanStd] = {
    "clip_vision_model": CLIP_MEAN_STD,
    "clip": CLIP_MEAN_STD,
    "eva": CLIP_MEAN_STD,
    "siglip_vision_model": SIGLIP_MEAN_STD,
    "siglip": SIGLIP_MEAN_STD,
}


def mean_std(model_type: str) -> MeanStd:
    """The (mean, std) of the vision tower with this 🤗 model_type; unknown types raise naming the known ones."""
    try:
        return NORMALISATION[model_type]
    except KeyError:
        raise ValueError(
            f"vision model_type {model_type!r}: no normalisation known; one of {sorted(NORMALISATION)}, "
            "or pass image_mean_std=(mean, std)"
        ) from None


def check_mean_std(value: Sequence[Sequence[float]]) -> MeanStd:
    """`value` as a (mean, std) pair of three floats each, std > 0; anything else raises ValueError."""
    try:
        mean, std = (tuple(float(x) for x in part) for part in value)
    except (TypeError, ValueError):
        raise ValueError(f"image_mean_std: expected ((m, m, m), (s, s, s)), got {value!r}") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"image_mean_std: expected three means and three positive stds, got {value!r}")
    return mean, std  # type: ignore[return-value]


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bicubic, aspect kept), then the centred `size`×`size` crop."""
    w, h = img.size
    if (w, h) != (size, size):
        # The long side truncates, as 🤗's get_resize_output_image_size does: outputs match CLIPImageProcessor's.
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        if (nw, nh) != (size, size):
            img = img.crop((left, top, left + size, top + size))
    return img


def mean_colour(mean_std: MeanStd) -> tuple[int, int, int]:
    """The tower's mean as an RGB byte colour, as LLaVA computes it: `int(m * 255)` per channel."""
    r, g, b = (int(m * 255) for m in mean_std[0])
    return r, g, b


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA's `expand2square`: the image centred on a square of its longer side, the margins filled with `fill`."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def resize_pad(img: Image.Image, size: int, fill: tuple[int, int, int]) -> Image.Image:
    """`expand_to_square` then the `size`×`size` resize (`resize_center_crop` of a square crops nothing)."""
    return resize_center_crop(expand_to_square(img, fill), size)


PREPROCESS = ("crop", "pad")


def decode(data: bytes, size: int, preprocess: str = "crop", fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """The image in `data` as RGB, `size`×`size` by `preprocess` (`crop`, or `pad` with `fill`).

    Corrupt bytes raise OSError (from PIL); an unknown `preprocess` raises ValueError naming the known ones.
    """
    if preprocess not in PREPROCESS:
        raise ValueError(f"image_preprocess {preprocess!r}: one of {', '.join(PREPROCESS)}")
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (size, size))  # JPEG only: the largest DCT reduction that keeps both sides >= size
    im.load()
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    return resize_pad(rgb, size, fill) if preprocess == "pad" else resize_center_crop(rgb, size)


def rgb_bytes_into(img: Image.Image, out: np.ndarray) -> None:
    """Write an RGB image's bytes into the uint8 [3, H, W] array `out`, one channel plane at a time."""
    for c, band in enumerate("RGB"):
        # PIL packs one band straight to bytes: half the cost of split() + np.asarray per band
        out[c] = np.frombuffer(img.tobytes("raw", band), dtype=np.uint8).reshape(img.height, img.width)


def normalise(img: Image.Image, mean_std: MeanStd) -> torch.Tensor:
    """A float32 [3, H, W] tensor of `(pixel / 255 - mean) / std` (`mixer.batch.normalized` of its bytes)."""
    out = np.empty((3, img.height, img.width), dtype=np.uint8)
    rgb_bytes_into(img, out)
    return normalized(torch.from_numpy(out), pixel_norm(mean_std))


def preprocess(data: bytes, size: int, mean_std: MeanStd, mode: str = "crop") -> torch.Tensor:
    """Stored image bytes → the tower's [3, size, size] float32 input (one image, for generation and evaluation)."""
    return normalise(decode(data, size, mode, mean_colour(mean_std)), mean_std)


def pixel_batch(images: list[Image.Image], size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded `size`×`size` RGB images → one uint8 [N, 3, size, size] tensor of their bytes (see `mixer.batch`).

    `out`: write into this tensor (a DataLoader worker passes a shared buffer from its `handoff.PixelPool`).
    """
    if out is None:
        out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    if tuple(out.shape) != (len(images), 3, size, size) or out.dtype != torch.uint8:
        raise ValueError(f"pixel_batch: out is {out.dtype} {tuple(out.shape)}, expected uint8 [{len(images)}, 3, H, W]")
    view = out.numpy()
    for i, img in enumerate(images):
        rgb_bytes_into(img, view[i])
    return out
