"""The resize modes (center_crop, keep_ratio, keep_ratio_largest, border, no) as one table of pure geometry plans.

Semantics follow img2dataset's `Resizer` so numbers can be compared with it: sides are scaled with Python's `round`
(albumentations' `smallest_max_size` / `longest_max_size`), crops and pads are centred with the odd pixel going
right/bottom, `border` pads with white, and with `resize_only_if_bigger` an image that needs no downscaling is left
exactly as it is: not cropped (center_crop) and not padded (border) either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyvips
from PIL import Image

Size = tuple[int, int]
Box = tuple[int, int, int, int]

BORDER_FILL = (255, 255, 255)  # img2dataset pads with [255, 255, 255]
# Upscaling: Pillow's LANCZOS. Downscaling: libvips' lanczos3 `resize`, antialiased like Pillow's. Measured on the
# bench corpus (150 photo-like JPEGs, 320-1024 px, center_crop 224, same draft decode; `bench.shards.resizers`):
# 213-238 vs 133-134 images per CPU-second with Pillow's LANCZOS (two runs), mean absolute difference 0.22 (of 255)
# from a full-resolution Pillow LANCZOS reference; cv2 INTER_AREA (img2dataset's filter) is 0.71 from it and
# Pillow's BOX 1.14. `gap=0` turns off libvips' integer box pre-shrink, which was 1.0 off the reference on 1/f
# noise at 6x (0.36 without, same speed).
RESAMPLE = Image.Resampling.LANCZOS
VIPS_KERNEL = "lanczos3"
VIPS_GAP = 0.0
# One thread per image: the build already runs one image per core, and vips' own pool would only contend with it.
# No operation cache: every image is new, and a cached result would pin its input buffer.
pyvips.concurrency_set(1)
pyvips.cache_set_max(0)
_vips_call = pyvips.Operation.call


@dataclass(frozen=True)
class ResizePlan:
    """What a mode does to a `source` image, as plain numbers.

    Scale it to `scaled`, then crop `crop` (a box in scaled pixels) or paste it at `offset` on a white `canvas`.
    `scaled == source` means no resampling.
    """

    source: Size
    scaled: Size
    crop: Box | None = None
    canvas: Size | None = None
    offset: Size = (0, 0)

    @property
    def final(self) -> Size:
        """The size of the image this plan produces."""
        if self.crop is not None:
            return (self.crop[2] - self.crop[0], self.crop[3] - self.crop[1])
        return self.canvas or self.scaled

    @property
    def downscales(self) -> bool:
        return self.scaled[0] < self.source[0] or self.scaled[1] < self.source[1]


def scale_side(width: int, height: int, side: int, by: Callable[[int, int], int]) -> Size:
    """(width, height) scaled so that `by(width, height)` (min or max) becomes `side`.

    The other side is rounded half-to-even like albumentations, and never below one pixel.
    """
    ref = by(width, height)
    if ref == side:
        return (width, height)
    return (
        side if width == ref else max(1, round(width * side / ref)),
        side if height == ref else max(1, round(height * side / ref)),
    )


def _centred_crop(scaled: Size, size: int) -> Box:
    left, top = (scaled[0] - size) // 2, (scaled[1] - size) // 2
    return (left, top, left + size, top + size)


def _centred_offset(scaled: Size, size: int) -> Size:
    return ((size - scaled[0]) // 2, (size - scaled[1]) // 2)


def plan_no(width: int, height: int, size: int, only_if_bigger: bool) -> ResizePlan:
    return ResizePlan((width, height), (width, height))


def plan_keep_ratio(width: int, height: int, size: int, only_if_bigger: bool) -> ResizePlan:
    if only_if_bigger and min(width, height) <= size:
        return plan_no(width, height, size, only_if_bigger)
    return ResizePlan((width, height), scale_side(width, height, size, min))


def plan_center_crop(width: int, height: int, size: int, only_if_bigger: bool) -> ResizePlan:
    if only_if_bigger and min(width, height) <= size:
        return plan_no(width, height, size, only_if_bigger)
    scaled = scale_side(width, height, size, min)
    return ResizePlan((width, height), scaled, crop=_centred_crop(scaled, size))


def plan_keep_ratio_largest(width: int, height: int, size: int, only_if_bigger: bool) -> ResizePlan:
    if only_if_bigger and max(width, height) <= size:
        return plan_no(width, height, size, only_if_bigger)
    return ResizePlan((width, height), scale_side(width, height, size, max))


def plan_border(width: int, height: int, size: int, only_if_bigger: bool) -> ResizePlan:
    if only_if_bigger and max(width, height) <= size:
        return plan_no(width, height, size, only_if_bigger)
    scaled = scale_side(width, height, size, max)
    return ResizePlan((width, height), scaled, canvas=(size, size), offset=_centred_offset(scaled, size))


def apply_plan(img: Image.Image, plan: ResizePlan) -> Image.Image:
    """Carry out `plan` on an RGB image.

    `img` may be smaller than `plan.source` (a JPEG decoded at a reduced DCT scale); it is resampled straight to
    `plan.scaled`, so the result is the same size either way. A downscale runs resample, crop and pad as one libvips
    pipeline, which computes only the pixels the crop keeps (center_crop drops a quarter of a 4:3 image's scaled
    columns) and hands back one final-size image.
    """
    if img.size != plan.scaled:
        done = _vips_plan(img, plan)
        if done is not None:
            return done
        img = resample(img, plan.scaled)
    if plan.crop is not None:
        img = img.crop(plan.crop)
    if plan.canvas is not None:
        canvas = Image.new("RGB", plan.canvas, BORDER_FILL)
        canvas.paste(img, plan.offset)
        img = canvas
    return img


def _vips_plan(img: Image.Image, plan: ResizePlan) -> Image.Image | None:
    """`plan` done in libvips for an RGB downscale (pixel for pixel `resample`, then the crop or pad), else None.

    The same pixels as `resample` then Pillow's crop or pad (`tests/shards/test_draft_gap.py`), for less work: Pillow's
    RGBX rows are lent to libvips without a copy (libvips carries the fourth band along, Pillow's unpacker drops it),
    `reducev` and `reduceh` are called as `resize` calls them, and only the kept pixels are computed, in this thread,
    through a region rather than by libvips' thread pool writing out a cropped image. `process_image` on the bench
    corpus: 3.05 against 3.32 ms an image with the earlier tobytes / resize / crop / write_to_memory
    (`bench.shards.pipelines --only "draft_gap 1.5"`, docs/benchmarks.md).
    """
    size = plan.scaled
    if not _libvips_shrinks(img, size):
        return None
    out, bands = _vips_image(img)
    # `resize` with gap=0 on a downscale: reducev by 1 / vscale, then reduceh by 1 / hscale, each only when it shrinks.
    # (`Operation.call` rather than `out.reducev`: pyvips' attribute lookup first tries a property of that name.)
    if size[1] < img.height:
        out = _vips_call("reducev", out, 1.0 / (size[1] / img.height), kernel=VIPS_KERNEL, gap=VIPS_GAP)
    if size[0] < img.width:
        out = _vips_call("reduceh", out, 1.0 / (size[0] / img.width), kernel=VIPS_KERNEL, gap=VIPS_GAP)
    if (out.width, out.height) != size:  # libvips rounds w * (size / w) back to size (3,000 random cases checked)
        return None
    left, top = 0, 0
    if plan.crop is not None:
        left, top = plan.crop[:2]
    if plan.canvas is not None:
        fill = [*BORDER_FILL, 255][:bands]
        out = _vips_call("embed", out, *plan.offset, *plan.canvas, extend="background", background=fill)
    width, height = plan.final
    pixels = pyvips.Region.new(out).fetch(left, top, width, height)
    return Image.frombytes("RGB", plan.final, pixels, "raw", "RGBX" if bands == 4 else "RGB")


def _libvips_shrinks(img: Image.Image, size: Size) -> bool:
    """Whether libvips resamples `img` to `size`: an RGB image neither of whose sides grows (upscales: Pillow)."""
    return img.mode == "RGB" and size[0] <= img.width and size[1] <= img.height


def _vips_image(img: Image.Image) -> tuple[pyvips.Image, int]:
    """An RGB image's pixels as a libvips image and its band count: Pillow's own RGBX memory when it is one block."""
    try:
        rows = pa.array(img)  # Pillow's Arrow export: a view of its memory, refused when the rows are not contiguous
    except (ValueError, pa.ArrowException):
        rows = None
    if rows is not None and getattr(rows.type, "list_size", None) == 4 and rows.offset == rows.values.offset == 0:
        pixels = rows.values.buffers()[1]
        if pixels is not None and pixels.size == img.width * img.height * 4:
            return pyvips.Image.new_from_memory(pixels, img.width, img.height, 4, "uchar"), 4
    return pyvips.Image.new_from_memory(img.tobytes(), img.width, img.height, 3, "uchar"), 3


def resample(img: Image.Image, size: Size) -> Image.Image:
    """An RGB `img` resampled to `size`: libvips lanczos3 when neither side grows, Pillow's LANCZOS otherwise."""
    if not _libvips_shrinks(img, size):
        return img.resize(size, RESAMPLE)
    src = pyvips.Image.new_from_memory(img.tobytes(), img.width, img.height, 3, "uchar")
    out = src.resize(size[0] / img.width, vscale=size[1] / img.height, kernel=VIPS_KERNEL, gap=VIPS_GAP)
    if (out.width, out.height) != size:  # libvips rounds w * (size / w) back to size (3,000 random cases checked)
        return img.resize(size, RESAMPLE)
    return Image.frombytes("RGB", size, out.write_to_memory())


PlanFn = Callable[[int, int, int, bool], ResizePlan]


@dataclass(frozen=True)
class ResizeMode:
    """A named resize mode: `plan` is the pure geometry; calling the mode applies it to an image."""

    name: str
    plan: PlanFn

    def __call__(self, img: Image.Image, size: int, only_if_bigger: bool) -> Image.Image:
        return apply_plan(img, self.plan(img.width, img.height, size, only_if_bigger))


RESIZE_MODES: dict[str, ResizeMode] = {
    mode.name: mode
    for mode in (
        ResizeMode("center_crop", plan_center_crop),  # shorter side -> size, then the centred size x size square
        ResizeMode("keep_ratio", plan_keep_ratio),  # shorter side -> size
        ResizeMode("keep_ratio_largest", plan_keep_ratio_largest),  # longer side -> size
        ResizeMode("border", plan_border),  # longer side -> size, then padded with white to size x size
        ResizeMode("no", plan_no),  # unchanged
    )
}


def resize_mode(name: str) -> ResizeMode:
    """The mode called `name`; an unknown name is a ValueError listing the known ones."""
    try:
        return RESIZE_MODES[name]
    except KeyError:
        raise ValueError(f"unknown resize_mode {name!r}; expected one of {sorted(RESIZE_MODES)}") from None
