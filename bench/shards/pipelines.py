"""`python -m bench.shards.pipelines`: JPEG -> stored JPEG candidates (decode, resize, crop, encode), speed, quality.

Each candidate turns the first `--n` corpus JPEGs into stored 224 x 224 center crops, in this process, one thread,
the candidates taking turns image by image (`interleaved`). Reported: images per CPU-second, and the mean absolute
pixel difference (0-255) of the STORED (encoded) image from (a) a full decode resized by Pillow's LANCZOS, not
re-encoded (`bench.shards.quality`'s reference) and (b) what img2dataset stores for the same file (its own `Resizer`,
run in `WORK/img2dataset-venv`; its row is its own figure against the reference). `--large MIN MAX` uses generated
corpus-style images with bigger sides instead (web photos are often larger than the corpus' 320-1024 px, and reach
the 1/4 and 1/8 DCT scales). `--pre-encode` adds the same comparison before any JPEG encoding (PNG stored).
Writes `WORK/pipelines*.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyvips
from PIL import Image

from bench.shards.corpus import SOURCE_QUALITY, image_name, make_image
from bench.shards.peer import RUN_ENV, VENV
from bench.shards.quality import reference
from shards import images, resize
from shards.images import process_image
from shards.options import ImageOptions
from shards.resize import BORDER_FILL, RESIZE_MODES, VIPS_GAP, VIPS_KERNEL, ResizePlan

Pipeline = Callable[[bytes], bytes]
MAX_PIXELS = 89_478_485


def _plan(width: int, height: int, size: int):  # noqa: ANN202 - a ResizePlan
    return RESIZE_MODES["center_crop"].plan(width, height, size, False)


def shipped(size: int, quality: int, **image: object) -> Pipeline:
    """`shards.images.process_image` as a build runs it, with these `ImageOptions` fields."""
    options = ImageOptions(size=size, encode_quality=quality, **image)  # type: ignore[arg-type]
    return lambda data: process_image(data, options, MAX_PIXELS).data


def _patched(run: Pipeline, owner: Any, name: str, value: Any) -> Pipeline:
    """`run` with `owner.name` set to `value` for the duration of each call (a what-if of one module attribute)."""

    def patched(data: bytes) -> bytes:
        saved = getattr(owner, name)
        setattr(owner, name, value)
        try:
            return run(data)
        finally:
            setattr(owner, name, saved)

    return patched


def flat_gap(size: int, quality: int, gap: float) -> Pipeline:
    """`process_image` with `gap` applied to every DCT scale (1/4 and 1/8 too), not only to 1/2."""
    return _patched(shipped(size, quality, draft_gap=gap), images, "COARSE_DRAFT_GAP", gap)


def vips(
    size: int, quality: int, gap: float, kernel: str = "lanczos3", reduce_gap: float = 0.0, **save: object
) -> Pipeline:
    """All in libvips (issue 18's previous path): decode at the 1/s keeping `gap`, `kernel` resize, crop, encode."""

    def run(data: bytes) -> bytes:
        head = pyvips.Image.new_from_buffer(data, "", access="sequential")
        plan = _plan(head.width, head.height, size)
        want = tuple(math.ceil(s * gap) for s in plan.scaled)
        shrink = next((k for k in (8, 4, 2) if min(plan.source[0] // want[0], plan.source[1] // want[1]) >= k), 1)
        img = pyvips.Image.jpegload_buffer(data, shrink=shrink, access="sequential")
        out = img.resize(plan.scaled[0] / img.width, vscale=plan.scaled[1] / img.height, kernel=kernel, gap=reduce_gap)
        left, top, right, bottom = plan.crop
        out = out.crop(left, top, right - left, bottom - top)
        opts = {"keep": "none", "optimize_coding": False, "interlace": False, "subsample_mode": "on"} | save
        return out.jpegsave_buffer(Q=quality, **opts)

    return run


def _previous_vips_plan(img: Image.Image, plan: ResizePlan) -> Image.Image | None:
    """`shards.resize._vips_plan` before this round: a copy of the RGB bytes, `resize`, `crop`, `write_to_memory`."""
    size = plan.scaled
    if img.mode != "RGB" or size[0] > img.width or size[1] > img.height:
        return None
    src = pyvips.Image.new_from_memory(img.tobytes(), img.width, img.height, 3, "uchar")
    out = src.resize(size[0] / img.width, vscale=size[1] / img.height, kernel=VIPS_KERNEL, gap=VIPS_GAP)
    if (out.width, out.height) != size:
        return None
    if plan.crop is not None:
        left, top, right, bottom = plan.crop
        out = out.crop(left, top, right - left, bottom - top)
    if plan.canvas is not None:
        out = out.embed(*plan.offset, *plan.canvas, extend="background", background=list(BORDER_FILL))
    return Image.frombytes("RGB", plan.final, out.write_to_memory())


def previous_resample(size: int, quality: int) -> Pipeline:
    """`process_image` with the libvips step as it was before this round (same pixels, more work)."""
    return _patched(shipped(size, quality), resize, "_vips_plan", _previous_vips_plan)


def thumbnail(size: int, quality: int) -> Pipeline:
    """The `thumbnail_buffer` of libvips (its shrink-on-load rule and resize defaults) to the scaled size, then crop."""

    def run(data: bytes) -> bytes:
        head = pyvips.Image.new_from_buffer(data, "", access="sequential")
        plan = _plan(head.width, head.height, size)
        out = pyvips.Image.thumbnail_buffer(data, plan.scaled[0], height=plan.scaled[1], size="force")
        left, top, right, bottom = plan.crop
        return out.crop(left, top, right - left, bottom - top).jpegsave_buffer(
            Q=quality, keep="none", optimize_coding=False, interlace=False, subsample_mode="on"
        )

    return run


def candidates(size: int, quality: int) -> dict[str, Pipeline]:
    return {
        **{f"process_image, draft_gap {g:g}": shipped(size, quality, draft_gap=g) for g in (2.0, 1.5, 1.25, 1.0)},
        "process_image, flat draft gap 1.25 (1/4, 1/8 too)": flat_gap(size, quality, 1.25),
        "process_image, no draft": shipped(size, quality, draft_decode=False),
        "process_image, draft_gap 1.5, previous libvips step (resize, crop, write_to_memory)": previous_resample(
            size, quality
        ),
        "libvips throughout, gap 2 (issue 18's previous path)": vips(size, quality, 2.0),
        "libvips throughout, gap 1.25": vips(size, quality, 1.25),
        "libvips throughout, gap 1": vips(size, quality, 1.0),
        "libvips throughout, gap 2, cubic": vips(size, quality, 2.0, "cubic"),
        "libvips throughout, gap 2, optimize_coding": vips(size, quality, 2.0, optimize_coding=True),
        "libvips throughout, gap 2, trellis": vips(size, quality, 2.0, trellis_quant=True),
        "libvips thumbnail_buffer": thumbnail(size, quality),
    }


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


# Run in img2dataset's own venv: its `Resizer` (cv2 decode, albumentations INTER_AREA, cv2 encode) as its downloader
# calls it with the benchmark's settings, on each file; the bytes it would store go next to the input's name.
_PEER_SCRIPT = """
import sys, pathlib
from img2dataset.resizer import Resizer
size, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
fmt = out.name.rsplit("-", 1)[1]
resizer = Resizer(size, "center_crop", False, encode_quality=95 if fmt == "jpg" else 1, encode_format=fmt)
for name in sys.argv[3:]:
    with open(name, "rb") as f:
        data, *_, err = resizer(f)
    assert err is None, (name, err)
    (out / pathlib.Path(name).name).write_bytes(data)
"""


def peer_outputs(work: Path, paths: list[Path], size: int, fmt: str = "jpg") -> list[bytes] | None:
    """What img2dataset stores for each of `paths` (its Resizer, from `WORK/img2dataset-venv`), or None."""
    python = work / VENV / "bin" / "python"
    if not python.exists():
        return None
    out = work / "peer-resizer" / f"{paths[0].parent.name}-{fmt}"
    out.mkdir(parents=True, exist_ok=True)
    missing = [str(p) for p in paths if not (out / p.name).exists()]
    if missing:
        env = {**os.environ, **RUN_ENV}
        env.pop("PYTHONPATH", None)
        subprocess.run([str(python), "-c", _PEER_SCRIPT, str(size), str(out), *missing], check=True, env=env)
    return [(out / p.name).read_bytes() for p in paths]


def large_images(work: Path, n: int, sides: tuple[int, int]) -> list[Path]:
    """`n` corpus-style images with both sides in `sides`, cached in `WORK/large-<lo>-<hi>/`."""
    folder = work / f"large-{sides[0]}-{sides[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / image_name(i) for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            buf = io.BytesIO()
            make_image(i, sides).save(buf, "JPEG", quality=SOURCE_QUALITY)
            path.write_bytes(buf.getvalue())
    return paths


def interleaved(
    chosen: dict[str, Pipeline], blobs: list[bytes], rounds: int
) -> tuple[dict[str, list[bytes]], dict[str, float]]:
    """Each candidate's stored images (first round) and CPU seconds, taking turns image by image.

    On a shared machine the load changes by the minute; running every candidate on image i before any on image
    i + 1 gives each the same share of it, so their ratios hold even when the absolute figures drift. Stored images
    are listed in input order.
    """
    for run in chosen.values():
        run(blobs[0])  # warm-up: first-call costs (libvips operation lookup) out of the timing
    stored: dict[str, list[bytes]] = {name: [] for name in chosen}
    spent = dict.fromkeys(chosen, 0.0)
    names = list(chosen)
    for r in range(rounds):
        for i, data in enumerate(blobs):
            # Each image starts with another candidate: the first to touch an image pays its cold caches.
            for name in names[i % len(names) :] + names[: i % len(names)]:
                t0 = time.process_time()
                out = chosen[name](data)
                spent[name] += time.process_time() - t0
                if r == 0:
                    stored[name].append(out)
    return stored, spent


def pre_encode(
    work: Path, paths: list[Path], blobs: list[bytes], refs: list[np.ndarray], size: int
) -> dict[str, float]:
    """Mean absolute difference from the reference of the resized pixels, stored as PNG: the resize alone."""

    def mad(outs: list[bytes]) -> float:
        return round(float(np.mean([np.abs(_decoded(o) - r).mean() for o, r in zip(outs, refs, strict=True)])), 3)

    found: dict[str, float] = {}
    peer = peer_outputs(work, paths, size, "png")
    if peer:
        found["img2dataset (its Resizer)"] = mad(peer)
    for gap in (2.0, 1.5, 1.25, 1.0):
        options = ImageOptions(size=size, encode_format="png", draft_gap=gap)
        found[f"process_image, draft_gap {gap:g}"] = mad([process_image(d, options, MAX_PIXELS).data for d in blobs])
    for name, value in found.items():
        print(f"  before encoding: {name:56} vs ref {value:.3f}", flush=True)
    return found


def main(argv: list[str] | None = None) -> dict[str, dict[str, float | None]]:
    p = argparse.ArgumentParser(prog="python -m bench.shards.pipelines", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="Images (the first n of the corpus).")
    p.add_argument("--size", type=int, default=224, help="Target side (center_crop).")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the stored images.")
    p.add_argument("--rounds", type=int, default=2, help="Timed passes over the images (quality from the first).")
    p.add_argument("--only", action="append", default=[], help="Run only candidates whose name contains this.")
    p.add_argument(
        "--large",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="Instead of the corpus: n generated corpus-style images with both sides in [MIN, MAX] (cached).",
    )
    p.add_argument(
        "--pre-encode",
        action="store_true",
        help="Also compare the resized pixels before any JPEG encoding: process_image and img2dataset's Resizer "
        "storing PNG (lossless), draft_gap candidates only.",
    )
    p.add_argument("--work", type=Path, default=Path("bench/_work/shards"), help="The work folder of bench.shards.run.")
    args = p.parse_args(argv)
    work = args.work.resolve()
    if args.large:
        paths = large_images(work, args.n, tuple(args.large))
    else:
        paths = [work / "www" / "images" / image_name(i) for i in range(args.n)]
    blobs = [path.read_bytes() for path in paths]
    refs = [reference(path, args.size) for path in paths]
    stored_by_peer = peer_outputs(work, paths, args.size)
    peer = [_decoded(d) for d in stored_by_peer] if stored_by_peer else []
    results: dict[str, dict[str, float | None]] = {}
    if peer:
        mad = float(np.mean([np.abs(o - r).mean() for o, r in zip(peer, refs, strict=True)]))
        results["img2dataset (its Resizer)"] = {"images_per_cpu_s": None, "mad_reference": round(mad, 3)}
        print(f"  {'img2dataset (its Resizer)':56} {'':>18} vs ref {mad:.3f}", flush=True)
    chosen = {
        name: run
        for name, run in candidates(args.size, args.quality).items()
        if not args.only or any(o in name for o in args.only)
    }
    stored, spent = interleaved(chosen, blobs, args.rounds)
    for name in chosen:
        outs = [_decoded(s) for s in stored[name]]
        rate = args.rounds * len(blobs) / spent[name]
        mad_ref = float(np.mean([np.abs(o - r).mean() for o, r in zip(outs, refs, strict=True)]))
        mad_peer = float(np.mean([np.abs(o - q).mean() for o, q in zip(outs, peer, strict=True)])) if peer else None
        results[name] = {
            "images_per_cpu_s": round(rate, 1),
            "ms_per_image": round(1000 / rate, 3),
            "mad_reference": round(mad_ref, 3),
            "mad_peer": None if mad_peer is None else round(mad_peer, 3),
        }
        vs_peer = "" if mad_peer is None else f"   vs img2dataset {mad_peer:.3f}"
        print(f"  {name:56} {rate:7.1f} img/CPU-s {1000 / rate:6.2f} ms   vs ref {mad_ref:.3f}{vs_peer}", flush=True)
    if args.pre_encode:
        results["pre-encode"] = pre_encode(work, paths, blobs, refs, args.size)
    label = f"-large-{args.large[0]}-{args.large[1]}" if args.large else ""
    (work / f"pipelines{label}.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
