"""The libvips JPEG fast path of `process_image`: same geometry and nearly the same pixels as the Pillow path, the
same DCT scale as Pillow's draft, and the Pillow path (with its messages) for everything it does not cover."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image
from test_images import BIG, noise, reason

from shards import images
from shards.images import draft_request, process_image
from shards.options import ImageOptions
from shards.resize import RESIZE_MODES
from shards.vips_jpeg import covered, dct_shrink, process_jpeg


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float)


@pytest.mark.parametrize("draft", [True, False])
@pytest.mark.parametrize("mode", ["center_crop", "keep_ratio", "keep_ratio_largest", "border"])
def test_fast_path_matches_the_pillow_path(mode: str, draft: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg(noise(1000, 700, seed=11))
    options = ImageOptions(resize_mode=mode, size=160, draft_decode=draft)
    plan = RESIZE_MODES[mode].plan(1000, 700, 160, False)
    assert process_jpeg(data, plan, 1, 95) is not None  # the fast path covers this input
    fast = process_image(data, options, BIG)
    monkeypatch.setattr(images, "covered", lambda *a: False)
    slow = process_image(data, options, BIG)
    assert (fast.width, fast.height, fast.orig_width, fast.orig_height, fast.sha256, fast.ext) == (
        slow.width,
        slow.height,
        slow.orig_width,
        slow.orig_height,
        slow.sha256,
        slow.ext,
    )
    a, b = pixels(fast.data), pixels(slow.data)
    assert a.shape == b.shape == (slow.height, slow.width, 3)
    assert np.abs(a - b).mean() < 0.5  # same decode scale and filter; measured about 0.05 on the bench corpus
    if mode == "border":  # the padding is white in both
        assert (a[0, :, :] > 250).all() and (b[0, :, :] > 250).all()


def test_dct_shrink_is_pillows_draft_choice() -> None:
    rng = random.Random(0)
    for _ in range(40):
        w, h = rng.randrange(64, 2400), rng.randrange(64, 2400)
        req = (rng.randrange(16, 900), rng.randrange(16, 900))
        img = Image.open(io.BytesIO(jpeg(Image.new("RGB", (w, h)))))
        img.draft("RGB", req)
        assert img.size == (-(-w // dct_shrink((w, h), req)), -(-h // dct_shrink((w, h), req))), (w, h, req)
    assert dct_shrink((1800, 1350), None) == 1


def test_rotated_non_rgb_and_non_jpeg_inputs_take_the_pillow_path() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = Image.open(io.BytesIO(jpeg(noise(300, 200), exif=exif.tobytes())))
    grey = Image.open(io.BytesIO(jpeg(noise(300, 200).convert("L"))))
    png = io.BytesIO()
    noise(300, 200).save(png, "PNG")
    plain = Image.open(io.BytesIO(jpeg(noise(300, 200))))
    assert covered(plain, "jpg") and not covered(plain, "png") and not covered(plain, "webp")
    assert not covered(rotated, "jpg") and not covered(grey, "jpg")
    assert not covered(Image.open(png), "jpg")
    upscale = RESIZE_MODES["center_crop"].plan(300, 200, 400, False)
    assert process_jpeg(jpeg(noise(300, 200)), upscale, 1, 95) is None  # upscaling stays with Pillow's LANCZOS


def test_a_truncated_jpeg_falls_back_and_keeps_pillows_message() -> None:
    data = jpeg(noise(600, 400))
    plan = RESIZE_MODES["center_crop"].plan(600, 400, 224, False)
    assert process_jpeg(data[: len(data) // 2], plan, dct_shrink((600, 400), draft_request(plan)), 95) is None
    assert reason(data[: len(data) // 2]).startswith("corrupt image: image file is truncated")
