"""Turn one image's untrusted bytes into the stored image: header checks, decode, orientation, RGB, resize, encode.

`process_image` returns a `ProcessedImage` or raises `ImageError` whose `reason` is short and stable, so the status
table's error histogram groups failures well. Everything is checked from the header before a pixel is decoded (pixel
limit, minimum size, aspect ratio), so a decompression bomb costs a few microseconds and no memory. The same bytes
and options always give the same output bytes: metadata is dropped and every encoder setting is pinned.

Pillow decodes (at a reduced DCT scale for JPEGs, see `draft_request`) and encodes; libvips downscales
(`shards.resize.apply_plan`). Pillow's libjpeg-turbo decodes and encodes faster than pyvips-binary's bundled mozjpeg
called through libvips: on the bench corpus a whole JPEG -> JPEG pipeline in libvips cost 4.68 ms an image against
4.27 ms this way at the same decode scale and 3.69 ms with the default `draft_gap` (`bench.shards.pipelines`).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from shards.options import DEFAULT_DRAFT_GAP, ImageOptions
from shards.resize import RESIZE_MODES, ResizePlan, Size, apply_plan, resize_mode

__all__ = ["ENCODERS", "RESIZE_MODES", "ImageError", "ProcessedImage", "draft_request", "process_image", "to_rgb"]

# Formats Pillow may try. The rest are left out on purpose: weak-magic plugins could claim an HTML error page,
# and EPS would hand untrusted bytes to Ghostscript.
_WANTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "PPM", "AVIF")
Image.init()
DECODE_FORMATS = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)
DRAFT_FORMATS = ("JPEG", "MPO")

# JPEG draft decoding (libjpeg's DCT scaling by 1/2, 1/4 or 1/8) goes down to no less than `ImageOptions.draft_gap`
# times the resampled size, and lanczos3 does the rest (the default and its measured quality: shards.options).
DRAFT_GAP = DEFAULT_DRAFT_GAP
COARSE_DRAFT_GAP = 2.0

ALPHA_BACKGROUND = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_EXIF_ORIENTATION = 0x0112
_MAGIC: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("PNG", lambda d: d.startswith(b"\x89PNG\r\n\x1a\n")),
    ("JPEG", lambda d: d.startswith(b"\xff\xd8\xff")),
    ("GIF", lambda d: d.startswith((b"GIF87a", b"GIF89a"))),
    ("WEBP", lambda d: d.startswith(b"RIFF") and d[8:12] == b"WEBP"),
)


class ImageError(ValueError):
    """An input that cannot become a stored image; `reason` is short and stable (it is the status row's message)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ProcessedImage:
    """A re-encoded image, ready to store.

    `width`/`height` are the stored pixels, `orig_*` the source's after EXIF orientation. `sha256` is the hex digest
    of the ORIGINAL input bytes, not of `data` (img2dataset's convention): it identifies the source image across
    runs, resize settings and encoders.
    """

    data: bytes
    ext: str
    width: int
    height: int
    orig_width: int
    orig_height: int
    sha256: str


def _encode_jpg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=False, progressive=False, subsampling="4:2:0")
    return buf.getvalue()


def _encode_png(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()  # lossless: `quality` does not apply
    img.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _encode_webp(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=quality, lossless=False, method=4, exact=False)
    return buf.getvalue()


ENCODERS: dict[str, Callable[[Image.Image, int], bytes]] = {
    "jpg": _encode_jpg,
    "png": _encode_png,
    "webp": _encode_webp,
}


def process_image(data: bytes, options: ImageOptions, max_pixels: int) -> ProcessedImage:
    """Decode `data`, check it against `options` and `max_pixels`, resize and re-encode it; raises ImageError."""
    mode = resize_mode(options.resize_mode)
    if options.encode_format not in ENCODERS:
        raise ValueError(f"unknown encode_format {options.encode_format!r}; expected one of {sorted(ENCODERS)}")
    img = _open(data, max_pixels)
    width, height = img.size
    _check_header(width, height, options, max_pixels)
    if options.draft_decode and img.format in DRAFT_FORMATS:
        _draft(img, mode.plan, options)
    img, orig = _decode(img, (width, height))
    plan = mode.plan(*orig, options.size, options.resize_only_if_bigger)
    out = apply_plan(img, plan)
    # No EXIF, XMP or text chunks, so the stored bytes depend on pixels and options only. ICC profiles go too:
    # pixels are taken as sRGB, as img2dataset (OpenCV) does.
    out.info = {}
    encoded = ENCODERS[options.encode_format](out, options.encode_quality)
    return ProcessedImage(
        data=encoded,
        ext=options.encode_format,
        width=out.width,
        height=out.height,
        orig_width=orig[0],
        orig_height=orig[1],
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the image and read its header; no pixel is decoded."""
    if not data:
        raise ImageError("not an image: empty")
    try:
        img = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
        # The decoder gets the whole file in one call instead of 64 kB pieces, each of which Pillow joins to what
        # the previous call left over and slices again: the same pixels for less copying (`tests/shards/test_images`).
        img.decodermaxblock = max(len(data), ImageFile.MAXBLOCK)
        return img
    except UnidentifiedImageError:
        known = next((fmt for fmt, magic in _MAGIC if magic(data)), None)
        if known is not None:  # Pillow gives up on a broken header the same way as on a non-image
            raise ImageError(f"corrupt image: unreadable {known} header") from None
        markup = data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")
        raise ImageError("not an image: html or xml" if markup else "not an image") from None
    except Image.DecompressionBombError as e:
        # Pillow's own guard fired first (pixels > 2 * PIL.Image.MAX_IMAGE_PIXELS); it does not say the sides.
        found = re.search(r"\((\d+) pixels\)", str(e))
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = f"{max_pixels}" if max_pixels <= pillow_limit else f"{pillow_limit} (PIL.Image.MAX_IMAGE_PIXELS x 2)"
        raise ImageError(f"too many pixels: {found.group(1) if found else '?'} > {limit}") from None
    except Exception as e:  # a known format whose header does not parse
        raise ImageError(f"corrupt image: {_describe(e)}") from None


def _check_header(width: int, height: int, options: ImageOptions, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"corrupt image: size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"too many pixels: {width} x {height} > {max_pixels}")
    if min(width, height) < options.min_image_size:
        raise ImageError(f"too small: {width}x{height} < {options.min_image_size}")
    ratio = max(width, height) / min(width, height)
    if options.max_aspect_ratio is not None and ratio > options.max_aspect_ratio:
        raise ImageError(f"aspect ratio {ratio:.2f} > {options.max_aspect_ratio:g}")


def draft_request(plan: ResizePlan, transposed: bool = False, gap: float = DRAFT_GAP) -> Size | None:
    """The size to pass to `JpegImageFile.draft` for `plan`, or None when no DCT scale would apply.

    The size is in the file's stored orientation (`transposed`: EXIF orientation 5-8). The scale is the smallest
    1/s (s in 8, 4, 2) keeping both sides at least `gap` times `plan.scaled` at s = 2, and at least
    max(`gap`, COARSE_DRAFT_GAP) times at s = 4 and 8, whose DCT-domain scaling is coarser (see `COARSE_DRAFT_GAP`).
    The request is the drafted size itself, so libjpeg picks exactly that scale.
    """
    if not plan.downscales:
        return None
    width, height = plan.source
    for s in (8, 4, 2):
        g = gap if s == 2 else max(gap, COARSE_DRAFT_GAP)
        if width // s >= math.ceil(plan.scaled[0] * g) and height // s >= math.ceil(plan.scaled[1] * g):
            want = (width // s, height // s)  # libjpeg then picks exactly 1/s: width // want[0] == s
            return (want[1], want[0]) if transposed else want
    return None


def _draft(img: Image.Image, plan_fn: Callable[..., ResizePlan], options: ImageOptions) -> None:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF: _decode reports it
        return
    transposed = orientation in (5, 6, 7, 8)
    width, height = img.size
    oriented = (height, width) if transposed else (width, height)
    plan = plan_fn(*oriented, options.size, options.resize_only_if_bigger)
    request = draft_request(plan, transposed, options.draft_gap)
    if request is not None:
        img.draft("RGB", request)


def _decode(img: Image.Image, header: Size) -> tuple[Image.Image, Size]:
    """Decode pixels, apply EXIF orientation and convert to RGB.

    Returns the image and the source's oriented size, taken from the header because a drafted JPEG decodes smaller.
    """
    try:
        img.load()
        before = img.size
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as e:
        raise ImageError(f"corrupt image: {_describe(e)}") from None
    # A transpose swaps the sides of a non-square image; square ones are the same either way.
    orig = (header[1], header[0]) if img.size != before else header
    return to_rgb(img), orig


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB: transparency composited on white, greyscale/palette/CMYK converted, 16-bit scaled."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling, turning most 16-bit images white.
        img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))
    try:
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img if img.mode == "RGB" else img.convert("RGB")
    except ValueError as e:
        raise ImageError(f"unsupported image mode {img.mode}: {e}") from None


def _describe(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]
