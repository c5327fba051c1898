"""`python -m bench.mixer.remote`: the loader on an object store, one GET after another vs a batch's GETs at once.

The second contestant is `mixer.loader.fetch`: a worker's micro batch fetched on `FETCH_THREADS` threads.

Story: build (or reuse) bench (c)'s corpus (`bench.mixer.loader.build`) → copy the build into a bucket of an
S3-compatible server on 127.0.0.1 (moto) whose ranged GETs are held `--latency-ms` each, as an object store's round
trip (`tests.support.harness.RangedGets`; listing and metadata requests are not held) → per round, in alternating order,
the loader (`--workers` processes) over the first `--batches` micro batches with 1 fetch thread per worker (one GET
after another, what it did before) and with `FETCH_THREADS`. Reported: images/s (median of rounds), the ranged GETs
made and the most the server had in flight at once. Both read the same batches (tests/mixer/test_loader_fetch.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import s3fs

from bench.mixer.loader import STAGE, build
from mixer.contract import CONTRACT, StageContract
from mixer.loader import StageLoader
from mixer.loader.fetch import FETCH_THREADS
from tests.support.harness import RangedGets, moto_s3

BUCKET = "tinymix-bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mixer.remote", description=__doc__.splitlines()[0])
    p.add_argument("--latency-ms", type=float, default=20.0, help="Time the server holds each ranged GET.")
    p.add_argument("--batches", type=int, default=40, help="Micro batches read per run (from the stage's start).")
    p.add_argument("--workers", type=int, default=2, help="Loader worker processes.")
    p.add_argument("--repeat", type=int, default=3, help="Rounds; the median is reported.")
    p.add_argument("--work", type=Path, default=Path("bench/_work/mixer-loader"), help="bench (c)'s work folder.")
    return p.parse_args(argv)


def run(url: str, workers: int, threads: int, batches: int, server: RangedGets) -> dict[str, float]:
    server.reset()
    loader = StageLoader(url, STAGE, num_workers=workers, fetch_threads=threads)
    t = time.perf_counter()
    images = 0
    for i, batch in enumerate(loader):
        images += int(batch["pixel_values"].shape[0])
        if i + 1 == batches:
            break
    wall = time.perf_counter() - t
    return {"wall_s": wall, "images_per_s": images / wall, "images": images, "gets": server.count, "peak": server.peak}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    work = args.work.resolve()
    local = build(work, 1500, 336, 2048)
    copy = work / "remote-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(local, copy, ignore=shutil.ignore_patterns("corpus"))
    url = f"s3://{BUCKET}/out"
    for meta in (copy / "stages").glob(f"*/{CONTRACT}"):  # the copy's contracts name its shards, read absolute
        c = StageContract.read_file(str(meta))
        on_s3 = {k: {s: v.replace(str(copy), url) for s, v in getattr(c, k).items()} for k in ("shards", "lengths")}
        c.model_copy(update=on_s3).write(str(meta))
    servers: list[RangedGets] = []

    def wrap(app):
        servers.append(RangedGets(app, args.latency_ms / 1e3))
        return servers[-1]

    with moto_s3(BUCKET, wrap=wrap) as env:
        os.environ.update(env)  # the loader's workers inherit it
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().put(str(copy), f"{BUCKET}/out", recursive=True)
        runs: dict[int, list[dict[str, float]]] = {1: [], FETCH_THREADS: []}
        for r in range(args.repeat):
            for threads in (1, FETCH_THREADS) if r % 2 == 0 else (FETCH_THREADS, 1):
                res = run(url, args.workers, threads, args.batches, servers[-1])
                runs[threads].append(res)
                print(
                    f"  round {r + 1}, {threads} fetch thread(s) per worker: {res['wall_s']:.2f} s, "
                    f"{res['images_per_s']:.1f} images/s, {res['gets']} ranged GETs, at most {res['peak']} at once",
                    flush=True,
                )
    med = {t: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for t, rs in runs.items()}
    before, after = med[1]["images_per_s"], med[FETCH_THREADS]["images_per_s"]
    print(
        f"\n{args.workers} workers, ranged GETs held {args.latency_ms:.0f} ms, {args.batches} micro batches: "
        f"one GET after another {before:.1f} images/s; {FETCH_THREADS} fetch threads {after:.1f} images/s "
        f"({after / before:.1f}x). {os.cpu_count()} cores, load average {os.getloadavg()}"
    )
    return {"args": vars(args), "runs": runs, "median": med}


if __name__ == "__main__":
    main()
