"""Image preprocessing against 🤗's CLIPImageProcessor, exact normalisation values, the table, and bad input."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from mixer.loader.images import (
    CLIP_MEAN_STD,
    NORMALISATION,
    SIGLIP_MEAN_STD,
    check_mean_std,
    decode,
    mean_std,
    normalise,
    pixel_batch,
    preprocess,
)


def picture(w: int, h: int, seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise: resampling differences would show
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    arr = np.clip(arr + rng.normal(0, 20, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("w,h", [(40, 40), (57, 33), (20, 31), (32, 32), (63, 90)])
@pytest.mark.parametrize("norm", [CLIP_MEAN_STD, SIGLIP_MEAN_STD])
def test_matches_clip_image_processor(w, h, norm):
    size = 32
    data = picture(w, h, seed=w * h)
    proc = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        do_convert_rgb=True,
        resample=Image.Resampling.BICUBIC,
        image_mean=list(norm[0]),
        image_std=list(norm[1]),
    )
    want = proc(images=Image.open(io.BytesIO(data)), return_tensors="pt")["pixel_values"][0]
    got = preprocess(data, size, norm)
    assert got.shape == (3, size, size) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # same PIL resize, float32 arithmetic


def test_exact_normalised_values_of_a_solid_image():
    buf = io.BytesIO()
    Image.new("RGB", (9, 6), (255, 0, 128)).save(buf, "PNG")
    got = preprocess(buf.getvalue(), 4, CLIP_MEAN_STD)
    mean, std = CLIP_MEAN_STD
    for c, v in enumerate((255, 0, 128)):
        expected = (np.float32(v) * np.float32(1 / 255) - np.float32(mean[c])) / np.float32(std[c])
        assert torch.all(got[c] == torch.tensor(expected, dtype=torch.float32))


def test_grey_and_palette_images_become_rgb():
    for mode in ("L", "P", "RGBA"):
        buf = io.BytesIO()
        Image.new(mode, (10, 10)).save(buf, "PNG")
        assert preprocess(buf.getvalue(), 8, SIGLIP_MEAN_STD).shape == (3, 8, 8)


def test_large_jpeg_decoded_at_reduced_scale_stays_close_to_a_full_decode():
    data = picture(256, 192, seed=5, fmt="JPEG")
    got = preprocess(data, 48, SIGLIP_MEAN_STD)
    with Image.open(io.BytesIO(data)) as im:
        full = im.convert("RGB")
    proc = CLIPImageProcessor(
        size={"shortest_edge": 48},
        crop_size={"height": 48, "width": 48},
        resample=Image.Resampling.BICUBIC,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    want = proc(images=full, return_tensors="pt")["pixel_values"][0]
    # The DCT-scaled decode differs from decode-then-resize by resampling noise only: under 2% of the pixel
    # range (0.04 in SigLIP units, where the range is 2) on average.
    assert (got - want).abs().mean() < 0.04


def test_table_and_overrides():
    assert mean_std("clip_vision_model") == CLIP_MEAN_STD == NORMALISATION["clip"]
    assert mean_std("siglip_vision_model") == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="vision model_type 'dinov2': no normalisation known"):
        mean_std("dinov2")
    assert check_mean_std([[0.1, 0.2, 0.3], (1, 2, 3)]) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    for bad in ([0.5, 0.5], ((0.5,) * 3, (0.5, 0.5)), ((0.5,) * 3, (0.5, 0.0, 0.5)), "abc"):
        with pytest.raises(ValueError, match="image_mean_std"):
            check_mean_std(bad)


def test_corrupt_bytes_raise_oserror():
    good = picture(20, 20, 1, "JPEG")
    with pytest.raises(OSError):
        preprocess(b"\0" * len(good), 16, CLIP_MEAN_STD)
    with pytest.raises(OSError):
        preprocess(good[: len(good) // 2], 16, CLIP_MEAN_STD)
    rng = random.Random(0)
    garbled = good[:20] + bytes(rng.randrange(256) for _ in range(len(good) - 20))
    with pytest.raises(OSError):
        preprocess(garbled, 16, CLIP_MEAN_STD)


@pytest.mark.parametrize("shared", [False, True])
def test_pixel_batch_stacks_normalised_images(shared):
    images = [decode(picture(40 + i, 36, seed=i), 16) for i in range(3)]
    batch = pixel_batch(images, 16, CLIP_MEAN_STD, shared)
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.float32 and batch.is_shared() == shared
    assert torch.equal(batch, torch.stack([normalise(im, CLIP_MEAN_STD) for im in images]))
    assert pixel_batch([], 16, CLIP_MEAN_STD, shared).shape == (0, 3, 16, 16)
