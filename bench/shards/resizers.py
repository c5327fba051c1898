"""`python -m bench.shards.resizers`: decode + center_crop resize candidates on the bench corpus, speed and quality.

Each candidate turns the first `--n` corpus JPEGs into 224 x 224 center crops (decode included, no encode), in this
process, one thread; reported: images per CPU-second and the mean absolute pixel difference (0-255) from the
reference, a full decode resized by Pillow's LANCZOS. cv2 rows need `opencv-python-headless` (img2dataset's
library, not a tinymix dependency; rows are skipped without it). Writes `WORK/resizers.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyvips
from PIL import Image

from bench.shards.corpus import image_name
from shards.resize import RESIZE_MODES, resample

Crop = Callable[[bytes], np.ndarray]


def _geometry(width: int, height: int, size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    plan = RESIZE_MODES["center_crop"].plan(width, height, size, False)
    assert plan.crop is not None
    return plan.scaled, plan.crop


def pillow(size: int, gap: float | None, how: Callable[[Image.Image, tuple[int, int]], Image.Image]) -> Crop:
    """Pillow decode (drafted to `gap` x the scaled size when given), then `how` to the scaled size, then the crop."""

    def run(data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        scaled, box = _geometry(img.width, img.height, size)
        if gap:
            img.draft("RGB", (math.ceil(scaled[0] * gap), math.ceil(scaled[1] * gap)))
        img = img.convert("RGB")
        return np.asarray(how(img, scaled).crop(box))

    return run


def vips_only(size: int) -> Crop:
    """The libvips path end to end: its own decode, lanczos3 resize, crop."""

    def run(data: bytes) -> np.ndarray:
        img = pyvips.Image.new_from_buffer(data, "", access="sequential")
        scaled, box = _geometry(img.width, img.height, size)
        out = img.resize(scaled[0] / img.width, vscale=scaled[1] / img.height, kernel="lanczos3", gap=0.0)
        out = out.crop(box[0], box[1], size, size)
        return np.ndarray(buffer=out.write_to_memory(), dtype=np.uint8, shape=(size, size, out.bands))

    return run


def cv2_area(size: int) -> Crop | None:
    """img2dataset's path: cv2 decode, INTER_AREA resize, crop (None without opencv)."""
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(1)

    def run(data: bytes) -> np.ndarray:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        scaled, box = _geometry(img.shape[1], img.shape[0], size)
        img = cv2.resize(img, scaled, interpolation=cv2.INTER_AREA)
        return img[box[1] : box[3], box[0] : box[2], ::-1]

    return run


def candidates(size: int) -> dict[str, Crop | None]:
    lanczos = Image.Resampling.LANCZOS
    return {
        "reference: full decode, Pillow LANCZOS": pillow(size, None, lambda i, s: i.resize(s, lanczos)),
        "tinymix before: draft 2x, Pillow LANCZOS": pillow(size, 2.0, lambda i, s: i.resize(s, lanczos)),
        "draft 2x, Pillow reducing_gap=2 LANCZOS": pillow(size, 2.0, lambda i, s: i.resize(s, lanczos, None, 2.0)),
        "draft 2x, Pillow reducing_gap=1 BICUBIC": pillow(
            size, 2.0, lambda i, s: i.resize(s, Image.Resampling.BICUBIC, None, 1.0)
        ),
        "draft 1x, Pillow LANCZOS": pillow(size, 1.0, lambda i, s: i.resize(s, lanczos)),
        "draft 2x, Pillow BOX": pillow(size, 2.0, lambda i, s: i.resize(s, Image.Resampling.BOX)),
        "tinymix now: draft 2x, libvips lanczos3": pillow(size, 2.0, resample),
        "libvips decode + lanczos3": vips_only(size),
        "cv2 decode + INTER_AREA (img2dataset)": cv2_area(size),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(prog="python -m bench.shards.resizers", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=150, help="Images (the first n of the corpus).")
    p.add_argument("--size", type=int, default=224, help="Target side (center_crop).")
    p.add_argument("--work", type=Path, default=Path("bench/_work/shards"), help="The work folder of bench.shards.run.")
    args = p.parse_args(argv)
    work = args.work.resolve()
    blobs = [(work / "www" / "images" / image_name(i)).read_bytes() for i in range(args.n)]
    pyvips.concurrency_set(1)
    results: dict[str, dict[str, float]] = {}
    reference: list[np.ndarray] = []
    for name, crop in candidates(args.size).items():
        if crop is None:
            print(f"  {name:44} skipped (library not installed)")
            continue
        t0 = time.process_time()
        outs = [crop(d).astype(np.int16) for d in blobs]
        spent = time.process_time() - t0
        reference = reference or outs
        diff = float(np.mean([np.abs(o - r).mean() for o, r in zip(outs, reference, strict=True)]))
        results[name] = {"images_per_cpu_s": round(len(blobs) / spent, 1), "mean_abs_diff": round(diff, 3)}
        print(f"  {name:44} {len(blobs) / spent:7.1f} images/CPU-s   mean abs diff {diff:.2f}", flush=True)
    (work / "resizers.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
