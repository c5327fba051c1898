"""`python -m bench.shards.experiments`: where one shard task's time goes, and what changing a knob would give.

Runs in this process, without Ray, on the corpus `bench.shards.run` generated (run that first):

1. image work only (`process_image` on bytes in memory, one thread, CPU time) split into decode / resize / encode,
   and for every `bench.shards.whatif` variant its images per CPU-second and its pixel error against a reference
   (full decode, LANCZOS), next to the error of img2dataset's own outputs from the last run;
2. fetch only: the task's `Downloader` over the served URLs, at a few thread / per-host settings;
3. `shards.task.process_shard` end to end on one shard of URLs under cProfile (its main thread: image work,
   writer, waiting for downloads), top functions by own time, then again with the cheaper resample filters.

Nothing in `shards/` is edited: variants are monkeypatched in this process. Writes `experiments.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.shards import whatif
from bench.shards.corpus import caption, image_name
from bench.shards.ours import bench_options
from shards.download import Downloader
from shards.images import draft_request, process_image
from shards.options import ImageOptions, ShardOptions
from shards.record import IMAGE_PLACEHOLDER, Record
from shards.resize import RESIZE_MODES, apply_plan
from shards.serve import serve_folder
from shards.task import process_shard

QUALITY_SAMPLE = 100  # images whose outputs are compared pixel by pixel with the reference


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def encode_all(blobs: list[bytes], image: ImageOptions, max_pixels: int) -> tuple[float, list[bytes]]:
    """Images per CPU-second of `process_image` over `blobs` in this thread, and its outputs.

    CPU time rather than wall time: the machine is shared, and CPU time barely moves with the others' load.
    """
    t0 = time.process_time()
    out = [process_image(data, image, max_pixels).data for data in blobs]
    return rate(len(blobs), time.process_time() - t0), out


def mean_abs_error(outputs: list[bytes], reference: list[bytes]) -> float:
    """Mean absolute pixel difference (0-255) between two lists of encoded images."""
    errors = [
        np.abs(
            np.asarray(Image.open(io.BytesIO(a)), dtype=np.int16) - np.asarray(Image.open(io.BytesIO(b)), np.int16)
        ).mean()
        for a, b in zip(outputs, reference, strict=True)
    ]
    return round(float(np.mean(errors)), 2)


def time_parts(blobs: list[bytes], size: int) -> dict[str, float]:
    """CPU milliseconds per image of decode (with tinymix's draft rule), resize + crop, and JPEG q95 encode."""
    spent = {"decode": 0.0, "resize": 0.0, "encode": 0.0}
    for data in blobs:
        t0 = time.process_time()
        img = Image.open(io.BytesIO(data))
        plan = RESIZE_MODES["center_crop"].plan(*img.size, size, False)
        request = draft_request(plan)  # the default draft_gap, as a build decodes
        if request is not None:
            img.draft("RGB", request)
        img = img.convert("RGB")
        t1 = time.process_time()
        img = apply_plan(img, plan)  # libvips lanczos3 + the crop, as shipped
        t2 = time.process_time()
        img.save(io.BytesIO(), "JPEG", quality=95)
        t3 = time.process_time()
        for part, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            spent[part] += dt
    return {f"{k}_ms": round(1000 * v / len(blobs), 2) for k, v in spent.items()}


def peer_outputs(folder: Path, n: int) -> list[bytes] | None:
    """img2dataset's stored images of inputs 0..n-1, from the last `bench.shards.run` (None if it has none)."""
    found: dict[int, bytes] = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name, member in members.items():
                if name.endswith(".json"):
                    url = json.loads(tf.extractfile(member).read())["url"]  # type: ignore[union-attr]
                    index = int(url.rsplit("/", 1)[1].split(".")[0])
                    jpg = members.get(name[: -len("json")] + "jpg")
                    if index < n and jpg is not None:
                        found[index] = tf.extractfile(jpg).read()  # type: ignore[union-attr]
    return [found[i] for i in range(n)] if len(found) == n else None


def image_variants(blobs: list[bytes], opts: ShardOptions, work: Path) -> dict[str, dict[str, float]]:
    """Images per CPU-second and error against the reference (full decode, LANCZOS) of each variant.

    Variants: tinymix as shipped, draft decoding off, every what-if; img2dataset's stored outputs (cv2 INTER_AREA)
    get the same error measure.
    """
    max_pixels = opts.download.max_pixels
    full = opts.image.model_copy(update={"draft_decode": False})
    _, reference = encode_all(blobs[:QUALITY_SAMPLE], full, max_pixels)
    variants: dict[str, dict[str, float]] = {}
    peer = peer_outputs(work / "out-img2dataset", QUALITY_SAMPLE)
    if peer is not None:
        variants["img2dataset (its stored outputs)"] = {"mae_vs_reference": mean_abs_error(peer, reference)}
        print(
            f"  {'img2dataset (its stored outputs)':30} {'':>7}                 error vs reference "
            f"{variants['img2dataset (its stored outputs)']['mae_vs_reference']:.2f}"
        )
    for name in ("tinymix as shipped", "draft_decode: false", *whatif.PATCHES):
        image = full if name == "draft_decode: false" else opts.image
        with whatif.patched(name) if name in whatif.PATCHES else contextlib.nullcontext():
            ips, _ = encode_all(blobs, image, max_pixels)
            _, outputs = encode_all(blobs[:QUALITY_SAMPLE], image, max_pixels)
        variants[name] = {"images_per_cpu_s": ips, "mae_vs_reference": mean_abs_error(outputs, reference)}
        print(f"  {name:30} {ips:7.1f} images/CPU-s   error vs reference {variants[name]['mae_vs_reference']:.2f}")
    return variants


def time_fetch(urls: list[str], opts: ShardOptions) -> float:
    """Images/s of the Downloader alone (bytes discarded)."""
    t0 = time.perf_counter()
    with Downloader(opts.download) as dl:
        for _, got in dl.fetch_many(enumerate(urls)):
            if not got.ok:
                raise RuntimeError(f"fetch failed: {got.final_url}: {got.error}")
    return rate(len(urls), time.perf_counter() - t0)


def time_shard(records: list[Record], opts: ShardOptions, out: Path, profile: Path | None = None) -> dict[str, float]:
    """Images per second and per CPU-second (all threads) of one `process_shard` call, optionally under cProfile."""
    shutil.rmtree(out, ignore_errors=True)
    prof = cProfile.Profile() if profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    process_shard(records, opts, str(out), 0)
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images_per_s": rate(len(records), wall), "images_per_cpu_s": rate(len(records), cpu)}


def top_functions(profile: Path, n: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(str(profile)).stats
    total = sum(v[2] for v in stats.values())
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]  # by own (internal) time
    return [
        {"function": f"{Path(f).name}:{line}({fn})", "own_s": round(v[2], 3), "share": round(v[2] / total, 3)}
        for (f, line, fn), v in rows
    ]


def caption_record(i: int, url: str) -> Record:
    turns = [{"role": "user", "content": IMAGE_PLACEHOLDER}, {"role": "assistant", "content": caption(i)}]
    return Record(i, "bench", "caption", turns, url)


def run(work: Path, n: int, size: int, threads: int) -> dict[str, Any]:
    paths = [work / "www" / "images" / image_name(i) for i in range(n)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"{missing[0]} does not exist: run `python -m bench.shards.run` first (same --work, --n)")
    blobs = [p.read_bytes() for p in paths]
    opts = bench_options(size, n, threads, threads)
    results: dict[str, Any] = {"n": n, "threads": threads}
    print(f"image work only, {n} images in memory, one thread (CPU time):", flush=True)
    results["parts_ms_per_image"] = time_parts(blobs, size)
    print(f"  {results['parts_ms_per_image']}", flush=True)
    results["image_variants"] = image_variants(blobs, opts, work)

    out = work / "exp-out"
    with serve_folder(work / "www") as base:
        urls = [f"{base}/images/{image_name(i)}" for i in range(n)]
        print("fetch only (Downloader), one process:", flush=True)
        results["fetch_images_per_s"] = {}
        for t, per_host in ((threads, threads), (threads, 8), (8, 8)):
            download = opts.download.model_copy(update={"threads": t, "per_host": per_host})
            ips = time_fetch(urls, opts.model_copy(update={"download": download}))
            results["fetch_images_per_s"][f"threads={t} per_host={per_host}"] = ips
            print(f"  threads={t:3} per_host={per_host:3}  {ips:7.1f} images/s", flush=True)
        print("process_shard end to end, one process (no Ray):", flush=True)
        records = [caption_record(i, url) for i, url in enumerate(urls)]
        profile = work / "process_shard.prof"
        results["shard_images_per_s"] = {"tinymix as shipped (cProfile on)": time_shard(records, opts, out, profile)}
        results["shard_profile_top"] = top_functions(profile, 12)
        for row in results["shard_profile_top"]:
            print(f"    {row['own_s']:7.2f} s {100 * row['share']:5.1f}%  {row['function']}")
        for name in ("tinymix as shipped", "resample-bicubic", "resample-box"):
            with whatif.patched(name) if name in whatif.PATCHES else contextlib.nullcontext():
                results["shard_images_per_s"][name] = time_shard(records, opts, out)
        for name, r in results["shard_images_per_s"].items():
            print(f"  {name:34} {r['images_per_s']:7.1f} images/s {r['images_per_cpu_s']:7.1f} images/CPU-s")
    shutil.rmtree(out, ignore_errors=True)
    (work / "experiments.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.shards.experiments", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="Images used (the first n of the corpus).")
    p.add_argument("--size", type=int, default=224, help="Target side (center_crop).")
    p.add_argument("--threads", type=int, default=32, help="Download threads.")
    p.add_argument("--work", type=Path, default=Path("bench/_work/shards"), help="The work folder of bench.shards.run.")
    args = p.parse_args(argv)
    run(args.work.resolve(), args.n, args.size, args.threads)


if __name__ == "__main__":
    main()
