"""The downscaling path (libvips lanczos3) against a full-resolution Pillow LANCZOS reference, mode by mode.

Quality bound: mean absolute difference (0-255) below 0.75 for the resample alone (measured 0.27-0.53 on these
1/f-noise pictures, the harshest case for a resampler) and below 1.0 for the whole `process_image` with a 1/2
draft decode (0.65); on the bench's photo-like corpus 0.22, where img2dataset's cv2 INTER_AREA is 0.71.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from shards.images import draft_request, process_image, to_rgb
from shards.options import ImageOptions
from shards.resize import RESAMPLE, RESIZE_MODES, ResizePlan, apply_plan, resample
from tests.shards.test_images import BIG, decode, encode, noise

RESAMPLE_BOUND = 0.75
PIPELINE_BOUND = 1.0
DOWNSCALING_MODES = ("center_crop", "keep_ratio", "keep_ratio_largest", "border")
SOURCES = [(1800, 1350, 7), (640, 400, 3), (333, 1001, 11)]


def reference(img: Image.Image, plan: ResizePlan) -> Image.Image:
    """`plan` carried out with Pillow's LANCZOS on the full-resolution image (the quality reference)."""
    scaled = img.resize(plan.scaled, RESAMPLE) if img.size != plan.scaled else img
    out = Image.new("RGB", plan.canvas, (255, 255, 255)) if plan.canvas else None
    if plan.crop is not None:
        scaled = scaled.crop(plan.crop)
    if out is not None:
        out.paste(scaled, plan.offset)
        return out
    return scaled


def mad(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.mark.parametrize("mode", DOWNSCALING_MODES)
@pytest.mark.parametrize(("width", "height", "seed"), SOURCES)
def test_downscale_is_within_the_bound_of_lanczos(mode: str, width: int, height: int, seed: int) -> None:
    src = noise(width, height, seed)
    plan = RESIZE_MODES[mode].plan(width, height, 224, False)
    assert plan.downscales
    out, ref = apply_plan(src, plan), reference(src, plan)
    assert out.size == ref.size == plan.final
    assert mad(out, ref) < RESAMPLE_BOUND
    assert mad(out, ref) > 0  # libvips really did the work: Pillow's own LANCZOS would match exactly


@pytest.mark.parametrize("mode", DOWNSCALING_MODES)
def test_whole_pipeline_adds_little_to_the_draft_decode(mode: str) -> None:
    """Against Pillow's LANCZOS on the same drafted decode: the resampler's own share of the error."""
    data = encode(noise(1800, 1350, 7), "JPEG", quality=95)
    out = decode(process_image(data, ImageOptions(resize_mode=mode, encode_format="png"), BIG).data)
    plan = RESIZE_MODES[mode].plan(1800, 1350, 224, False)
    drafted = Image.open(io.BytesIO(data))
    drafted.draft("RGB", draft_request(plan))
    assert drafted.size[0] < 1800  # a DCT scale applied
    ref = reference(drafted.convert("RGB"), plan)
    assert out.size == ref.size == plan.final
    assert mad(out, ref) < RESAMPLE_BOUND


@pytest.mark.parametrize("mode", ["center_crop", "keep_ratio"])
def test_whole_pipeline_is_within_the_bound_of_a_full_decode(mode: str) -> None:
    # Shorter side to 224 drafts at 1/2. The longer-side modes draft this source at 1/4, whose DCT-domain scaling
    # alone is ~2.5 off on 1/f noise, with Pillow's LANCZOS as with libvips (the DRAFT_GAP rule, unchanged here).
    data = encode(noise(1800, 1350, 7), "JPEG", quality=95)
    out = decode(process_image(data, ImageOptions(resize_mode=mode, encode_format="png"), BIG).data)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    ref = reference(full, RESIZE_MODES[mode].plan(1800, 1350, 224, False))
    assert out.size == ref.size
    assert mad(out, ref) < PIPELINE_BOUND


def test_upscaling_is_pillow_lanczos_exactly() -> None:
    src = noise(100, 60, 1)
    assert np.array_equal(np.asarray(resample(src, (373, 224))), np.asarray(src.resize((373, 224), RESAMPLE)))


@pytest.mark.parametrize(("size", "target"), [((1000, 1), (224, 1)), ((2, 2), (1, 1)), ((3001, 17), (1500, 9))])
def test_exact_sizes_at_the_edges(size: tuple[int, int], target: tuple[int, int]) -> None:
    out = resample(Image.new("RGB", size, (10, 200, 30)), target)
    assert out.size == target and out.mode == "RGB"
    # a flat colour stays exactly flat
    assert {tuple(px) for px in np.asarray(out).reshape(-1, 3).tolist()} == {(10, 200, 30)}


@pytest.mark.parametrize("pil_mode", ["L", "RGBA", "P", "CMYK"])
def test_other_modes_are_converted_then_downscaled_within_the_bound(pil_mode: str) -> None:
    src = noise(900, 600, 5).convert(pil_mode)
    out = decode(process_image(encode(src, "TIFF"), ImageOptions(encode_format="png"), BIG).data)
    ref = reference(to_rgb(src), RESIZE_MODES["center_crop"].plan(900, 600, 224, False))
    assert out.size == (224, 224) and out.mode == "RGB"
    assert mad(out, ref) < RESAMPLE_BOUND


def test_exif_orientation_is_applied_before_the_downscale() -> None:
    src = noise(1200, 700, 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(src, "JPEG", quality=95, exif=exif.tobytes())
    # draft_gap 2 decodes this one in full, so the bound measures the orientation, not the draft (test_draft_gap.py)
    options = ImageOptions(resize_mode="keep_ratio", encode_format="png", draft_gap=2.0)
    out = process_image(data, options, BIG)
    assert (out.width, out.height) == (224, 384) and (out.orig_width, out.orig_height) == (700, 1200)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    ref = reference(upright, RESIZE_MODES["keep_ratio"].plan(700, 1200, 224, False))
    assert mad(decode(out.data), ref) < PIPELINE_BOUND
