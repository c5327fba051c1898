"""The fast path of `shards.images.process_image` for the common web image: a JPEG stored as JPEG, done in libvips.

Decode (at the same reduced DCT scale Pillow's draft would pick), resize (the same lanczos3 as `shards.resize`), crop
or pad, and encode run as one libvips pipeline that streams the JPEG's rows, with the GIL released: no full-size
RGB buffer is packed for a second library, and a shard task's image threads run in parallel. Anything it does not
cover (other formats or colour modes, EXIF orientation, upscaling, another output format, an input libvips refuses)
returns None and goes through the Pillow path, whose checks and error messages stay the reference.
"""

from __future__ import annotations

import pyvips
from PIL import Image

from shards.resize import BORDER_FILL, VIPS_GAP, VIPS_KERNEL, ResizePlan, Size

_EXIF_ORIENTATION = 0x0112


def dct_shrink(source: Size, request: Size | None) -> int:
    """The DCT scale denominator `JpegImageFile.draft(request)` picks: the largest of 8, 4, 2, 1 keeping the size."""
    if request is None:
        return 1
    scale = min(source[0] // request[0], source[1] // request[1])
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def covered(header: Image.Image, encode_format: str) -> bool:
    """Whether the fast path applies to this opened (not decoded) image: an RGB JPEG without rotation, saved as jpg."""
    if encode_format != "jpg" or header.format != "JPEG" or header.mode != "RGB":
        return False
    try:
        return header.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except Exception:  # unreadable EXIF: the Pillow path reports it
        return False


def process_jpeg(data: bytes, plan: ResizePlan, shrink: int, quality: int) -> bytes | None:
    """`data` carried through `plan` and encoded as JPEG (4:2:0, no metadata), or None to take the Pillow path.

    `shrink` is the DCT scale to decode at (see `dct_shrink`). Only downscales: libvips then resamples exactly as
    `shards.resize.resample` does, from the same decoded size.
    """
    if not plan.downscales:
        return None
    try:
        img = pyvips.Image.jpegload_buffer(data, shrink=shrink, fail_on="error", access="sequential")
        if img.bands != 3 or img.format != "uchar" or img.width < plan.scaled[0] or img.height < plan.scaled[1]:
            return None
        out = img.resize(
            plan.scaled[0] / img.width, vscale=plan.scaled[1] / img.height, kernel=VIPS_KERNEL, gap=VIPS_GAP
        )
        if (out.width, out.height) != plan.scaled:
            return None
        if plan.crop is not None:
            left, top, right, bottom = plan.crop
            out = out.crop(left, top, right - left, bottom - top)
        if plan.canvas is not None:
            out = out.embed(*plan.offset, *plan.canvas, extend="background", background=list(BORDER_FILL))
        # No metadata (EXIF, XMP, ICC): pixels are taken as sRGB, as in the Pillow path and img2dataset.
        return out.jpegsave_buffer(Q=quality, keep="none", optimize_coding=False, interlace=False, subsample_mode="on")
    except pyvips.Error:  # corrupt or unusual: the Pillow path decides, with its own error message
        return None
