"""The benchmark's input: deterministic photo-like JPEGs of varied sizes, and the URL lists both tools read.

Image `i` depends only on `i` (its own seeded generator), so a cached folder is extended, never regenerated, when
`--n` grows. Pixels are 1/f-like noise (octaves of upsampled random fields) over a colour gradient, with soft
shapes for edges, saved at quality 90: JPEG sizes land where web photos do (tens to hundreds of kB), which
pure gradients (a few kB) or white noise (megabytes) would not.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageChops, ImageDraw, ImageOps

MIN_SIDE, MAX_SIDE = 320, 1024
SOURCE_QUALITY = 90
SEED = 20240601
OCTAVES = ((8, 40.0), (32, 22.0), (128, 12.0), (512, 6.0))  # (grid cells on the longer side, amplitude)


def image_name(i: int) -> str:
    return f"{i:06d}.jpg"


def make_image(i: int, sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE)) -> Image.Image:
    """Synthetic photo number `i`: both sides uniform in `sides` ([MIN_SIDE, MAX_SIDE] for the benchmark's input).

    Built from 8-bit PIL operations only (resize, add), which keeps generation to tens of milliseconds per image.
    """
    rng = np.random.default_rng([SEED, i])
    w, h = (int(s) for s in rng.integers(sides[0], sides[1] + 1, size=2))
    c0, c1 = (tuple(int(v) for v in rng.integers(40, 216, size=3)) for _ in range(2))
    ramp = Image.linear_gradient("L").rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR)
    ramp = ramp.crop((64, 64, 192, 192))  # inside the rotation's inscribed circle: no black corners
    img = ImageOps.colorize(ramp.resize((w, h), Image.BILINEAR), c0, c1)
    for cells, amp in OCTAVES:
        gw, gh = max(2, cells * w // max(w, h)), max(2, cells * h // max(w, h))
        # Mostly luminance noise with some colour, as in photos; centred on 128 so add(offset=-128) is signed.
        noise = 0.85 * rng.normal(0, 1, size=(gh, gw, 1)) + 0.4 * rng.normal(0, 1, size=(gh, gw, 3))
        small = np.clip(128 + amp * noise, 0, 255).astype(np.uint8)
        img = ImageChops.add(img, Image.fromarray(small).resize((w, h), Image.BICUBIC), scale=1.0, offset=-128)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return img


def _write_image(path: Path, i: int) -> None:
    buf = io.BytesIO()
    make_image(i).save(buf, "JPEG", quality=SOURCE_QUALITY)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def ensure_images(folder: Path, n: int, processes: int = 1, distinct: int | None = None) -> list[Path]:
    """Images 0..n-1 in `folder`, generating only the missing ones (each written under a temp name, then renamed).

    `distinct`: only images 0..distinct-1 are generated; image i >= distinct is a hard link to image i % distinct
    (a large input at the cost of a smaller one to generate; use a work folder of its own, since those names then
    hold copies, not image i).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / image_name(i) for i in range(n)]
    unique = n if distinct is None else min(n, distinct)
    _generate(paths[:unique], processes)
    for i in range(unique, n):
        if not paths[i].exists():
            os.link(paths[i % unique], paths[i])
    return paths


def _generate(paths: list[Path], processes: int) -> None:
    folder = paths[0].parent if paths else Path(".")
    missing = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    if not missing:
        return
    print(f"generating {len(missing)} images in {folder} (cached for later runs)", flush=True)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for done, _ in enumerate(pool.imap_unordered(_write_one, missing, chunksize=8), 1):
            if done % 250 == 0 or done == len(missing):
                print(f"  {done}/{len(missing)}", flush=True)


def _write_one(job: tuple[Path, int]) -> None:
    _write_image(*job)


def caption(i: int) -> str:
    return f"synthetic photo {i}"


def write_inputs(folder: Path, base_url: str, n: int) -> dict[str, Path]:
    """The same n URLs as a Parquet `url, caption` list (img2dataset) and a CC3M TSV `caption\\turl` (tinymix)."""
    urls = [f"{base_url}/images/{image_name(i)}" for i in range(n)]
    captions = [caption(i) for i in range(n)]
    parquet, tsv = folder / "urls.parquet", folder / "cc3m.tsv"
    pq.write_table(pa.table({"url": urls, "caption": captions}), parquet)
    tsv.write_text("".join(f"{c}\t{u}\n" for c, u in zip(captions, urls, strict=True)), encoding="utf-8")
    return {"parquet": parquet, "tsv": tsv}


def describe(paths: list[Path]) -> dict[str, float]:
    """Size statistics of the corpus (file bytes and pixels), for the results file."""
    nbytes = np.array([p.stat().st_size for p in paths], dtype=np.float64)
    return {
        "images": len(paths),
        "total_mb": round(nbytes.sum() / 1e6, 1),
        "mean_kb": round(nbytes.mean() / 1e3, 1),
        "median_kb": round(float(np.median(nbytes)) / 1e3, 1),
    }
