"""The ceiling: a plain single-process loop doing only tinymix's image work (read file, `process_image`).

The same image settings as the benchmark's tinymix run (center_crop, JPEG quality 95, the default `draft_gap`:
Pillow decodes and encodes, libvips downscales) but none of the machinery: no HTTP, no Ray, no threads, no tar, no
status files. Its images/s times the core count is what the image work alone would allow on this machine.
"""

from __future__ import annotations

import time
from pathlib import Path

from shards.images import process_image
from shards.options import ImageOptions

MAX_PIXELS = 89_478_485  # tinymix's default decompression-bomb limit


def center_crop_jpeg(data: bytes, size: int, quality: int) -> bytes:
    """`data` as tinymix stores it: shorter side to `size`, centred `size` x `size` crop, JPEG at `quality`."""
    options = ImageOptions(size=size, resize_mode="center_crop", encode_format="jpg", encode_quality=quality)
    return process_image(data, options, MAX_PIXELS).data


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
