"""The ceiling: a plain single-process PIL loop doing only the image work (read file, decode, center_crop, encode).

It applies the same image settings as tinymix's defaults (JPEG draft decoding down to twice the resampled size,
LANCZOS, quality 95, 4:2:0) but none of its machinery: no HTTP, no Ray, no checks, no tar, no status files.
Its images/s times the core count is what the image work alone would allow on this machine.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

from PIL import Image

from shards.resize import resample

DRAFT_GAP = 2.0  # the same rule as tinymix's `shards.images.DRAFT_GAP` and Pillow's `reducing_gap=2.0`


def center_crop_jpeg(data: bytes, size: int, quality: int, draft_gap: float | None = DRAFT_GAP) -> bytes:
    """Shorter side to `size` (`shards.resize.resample`), centred `size` x `size` crop, JPEG at `quality`."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    short = min(w, h)
    scaled = (size if w == short else round(w * size / short), size if h == short else round(h * size / short))
    if draft_gap and img.format == "JPEG":
        img.draft("RGB", (math.ceil(scaled[0] * draft_gap), math.ceil(scaled[1] * draft_gap)))
    img = img.convert("RGB")
    if img.size != scaled:
        img = resample(img, scaled)  # tinymix's resampler (libvips lanczos3 down, Pillow LANCZOS up)
    left, top = (scaled[0] - size) // 2, (scaled[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()


def run_ceiling(paths: list[Path], size: int, quality: int = 95) -> dict[str, float | int]:
    """Time the loop over `paths` in this process: images/s of one core, and the CPU seconds it took.

    The process's CPU time includes the HTTP server's threads, idle during the ceiling.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    out_bytes = 0
    for path in paths:
        out_bytes += len(center_crop_jpeg(path.read_bytes(), size, quality))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "images": len(paths),
        "images_per_s_1core": len(paths) / wall,
        "out_mb": out_bytes / 1e6,
    }
