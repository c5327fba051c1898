"""Image preprocessing against 🤗's CLIPImageProcessor, exact normalisation values, the table, bad input, and the
uint8 batch path: bytes in the batch, normalised by the consumer to exactly the former float32 path's values."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from mixer.batch import _normalized_torch, normalize_pixels, normalized, pixel_norm
from mixer.loader.handoff import PixelPool
from mixer.loader.images import (
    CLIP_MEAN_STD,
    NORMALISATION,
    SIGLIP_MEAN_STD,
    check_mean_std,
    decode,
    mean_colour,
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


def llava_expand2square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA-1.5's `expand2square` (llava/mm_utils.py), the reference for `image_preprocess: pad`."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background)
    result.paste(img, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return result


@pytest.mark.parametrize("w,h", [(57, 33), (20, 31), (32, 32), (63, 90)])
@pytest.mark.parametrize("norm", [CLIP_MEAN_STD, SIGLIP_MEAN_STD])
def test_pad_matches_llava_expand2square_then_clip_image_processor(w, h, norm):
    size = 32
    data = picture(w, h, seed=w + h)
    proc = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=Image.Resampling.BICUBIC,
        image_mean=list(norm[0]),
        image_std=list(norm[1]),
    )
    background = tuple(int(x * 255) for x in proc.image_mean)  # LLaVA's train.py / model_vqa.py
    square = llava_expand2square(Image.open(io.BytesIO(data)).convert("RGB"), background)
    want = proc(images=square, return_tensors="pt")["pixel_values"][0]
    got = preprocess(data, size, norm, mode="pad")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if w != h:  # nothing was cropped: the margins hold the mean colour, and differ from the crop
        assert decode(data, size, "pad", mean_colour(norm)).getpixel((0, 0)) == background
        assert (got - preprocess(data, size, norm)).abs().max() > 0.1


def test_unknown_preprocess_is_named():
    with pytest.raises(ValueError, match="image_preprocess 'stretch': one of crop, pad"):
        decode(picture(8, 8, 0), 8, "stretch")


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


def former_float_path(img: Image.Image, norm) -> torch.Tensor:
    """The loader's normalisation before pixels travelled as bytes, kept as the reference: a float32 table per channel
    of `(v * float32(1/255) - mean) / std` for each byte value, mapped through PIL's `point`."""
    mean, std = (np.asarray(x, dtype=np.float32)[:, None] for x in norm)
    table = (np.arange(256, dtype=np.float32)[None, :] * np.float32(1 / 255) - mean) / std
    out = np.empty((3, img.height, img.width), dtype=np.float32)
    for c, band in enumerate(img.split()):
        out[c] = np.asarray(band.point(table[c].tolist(), "F"))
    return torch.from_numpy(out)


def every_byte(seed: int) -> Image.Image:
    """A 16x16 RGB image holding each of the 256 byte values once per channel, in a random order per channel."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.stack([rng.permutation(256).reshape(16, 16) for _ in range(3)], -1).astype(np.uint8))


OTHER = ((0.1, 0.9, 0.33), (0.07, 1.3, 0.29))


@pytest.mark.parametrize("pooled", [False, True])
def test_pixel_batch_stacks_the_rgb_bytes(pooled):
    images = [decode(picture(40 + i, 36, seed=i), 16) for i in range(3)]
    out = PixelPool().take(3, 16) if pooled else None
    batch = pixel_batch(images, 16, out)
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.uint8 and batch.is_shared() == pooled
    want = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images])
    assert torch.equal(batch, want)
    assert pixel_batch([], 16).shape == (0, 3, 16, 16)
    with pytest.raises(ValueError, match=r"pixel_batch: out is torch.uint8 \(2, 3, 16, 16\), expected uint8 \[3,"):
        pixel_batch(images, 16, torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


@pytest.mark.parametrize("norm", [CLIP_MEAN_STD, SIGLIP_MEAN_STD, OTHER])
def test_normalised_bytes_equal_the_former_float_path_bit_for_bit(norm):
    images = [every_byte(seed) for seed in range(3)] + [decode(picture(57, 33, seed=1), 16)]
    batch = {"pixel_values": pixel_batch(images, 16), "pixel_norm": pixel_norm(norm), "labels": torch.zeros(2, 4)}
    want = torch.stack([former_float_path(im, norm) for im in images])
    got = normalize_pixels(batch)
    assert got["pixel_values"].dtype == torch.float32 and torch.equal(got["pixel_values"], want)
    assert "pixel_norm" not in got and got["labels"] is batch["labels"]
    for im, w in zip(images, want, strict=True):
        assert torch.equal(normalise(im, norm), w)  # the one-image path (generation, evaluation) too
    bf16 = normalize_pixels(batch, "cpu", torch.bfloat16)["pixel_values"]
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, want.to(torch.bfloat16))
    # the torch operations other devices run, here on the CPU: the same IEEE float32 steps, the same values
    assert torch.equal(_normalized_torch(batch["pixel_values"], batch["pixel_norm"]), want)


def test_normalize_pixels_takes_float_batches_as_normalised_and_rejects_bytes_without_a_norm():
    floats = {"pixel_values": torch.randn(2, 3, 4, 4), "input_ids": torch.zeros(1, 3, dtype=torch.long)}
    out = normalize_pixels(floats, "cpu")
    assert torch.equal(out["pixel_values"], floats["pixel_values"]) and out.keys() == floats.keys()
    with pytest.raises(ValueError, match="pixel_values are torch.uint8 but the batch has no pixel_norm"):
        normalize_pixels({"pixel_values": torch.zeros(1, 3, 4, 4, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="pixel_values: expected uint8 RGB bytes, got torch.float32"):
        normalized(torch.zeros(1, 3, 4, 4), pixel_norm(CLIP_MEAN_STD))
    with pytest.raises(ValueError, match=r"pixel_norm: expected \[2, 3\]"):
        normalized(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.ones(3))
