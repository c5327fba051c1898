"""tinymix's side: the URL list as a CC3M TSV through `shards.build.build_shards` on a fresh local Ray cluster.

The cluster start-up (`ray.init`) is timed apart from the build, because a long build pays it once; both numbers
are reported. Everything after it is in the build's wall time: Ray worker processes importing `shards`, reading
the TSV, downloads, image work, writing tars, status files and the merged index. CPU seconds are counted over
the same span (`bench.shards.cpu`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from bench.shards import whatif
from bench.shards.cpu import by_name, descendants_cpu, spent_since
from shards.build import build_shards
from shards.cluster import connect
from shards.options import DownloadOptions, ImageOptions, ShardOptions
from shards.readers import SourceSpec

SOURCE = "bench"
SITE = Path(__file__).resolve().parent / "whatif_site"
NICENESS_ENV = "RAY_worker_niceness"
RAY_DEFAULT_NICENESS = 15


def bench_options(size: int, per_shard: int, threads: int, per_host: int) -> ShardOptions:
    """The shard options matching the img2dataset command: center_crop to `size`, jpg quality 95."""
    return ShardOptions(
        format="webdataset",
        samples_per_shard=per_shard,
        image=ImageOptions(size=size, resize_mode="center_crop", encode_format="jpg", encode_quality=95),
        download=DownloadOptions(threads=threads, per_host=per_host, allow_private=True),  # served on 127.0.0.1
    )


@contextmanager
def _environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set (str) or leave alone (None) environment variables for the duration; Ray's processes inherit them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cluster_env(what_if: str | None, worker_niceness: int | None) -> dict[str, str | None]:
    """The environment a bench cluster starts in.

    Ray starts workers at nice 15 unless `RAY_worker_niceness` says otherwise. A what-if puts `whatif_site` on
    PYTHONPATH, whose `sitecustomize` patches every Python process Ray starts (pre-started workers included).
    """
    env: dict[str, str | None] = {NICENESS_ENV: None if worker_niceness is None else str(worker_niceness)}
    if what_if is not None:
        env[whatif.ENV] = whatif.check(what_if)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH")) if p)
    return env


def run_tinymix(
    tsv: Path,
    out: Path,
    processes: int,
    opts: ShardOptions,
    what_if: str | None = None,
    worker_niceness: int | None = None,
) -> dict[str, float | int]:
    """Build `tsv` into a fresh `out` on a new Ray cluster of `processes` CPUs; timings and counts.

    `what_if` names a `bench.shards.whatif` variant applied in every Ray worker (not tinymix as shipped).
    `worker_niceness` sets the Ray workers' nice value (None: Ray's default, 15).
    """
    shutil.rmtree(out, ignore_errors=True)  # a leftover build would be resumed, i.e. skipped
    if ray.is_initialized():
        ray.shutdown()
    procs_start, driver_start = descendants_cpu(), time.thread_time()
    t0 = time.perf_counter()
    with _environ(cluster_env(what_if, worker_niceness)):
        connect(None, num_cpus=processes)
    startup = time.perf_counter() - t0
    spec = SourceSpec(name=SOURCE, kind="cc3m-tsv", paths=[str(tsv)], task="caption")
    try:
        procs_before, driver_before = descendants_cpu(), time.thread_time()
        t1 = time.perf_counter()
        report = build_shards([spec], opts, str(out), progress=False)[SOURCE]
        wall = time.perf_counter() - t1
        procs_after, driver_after = descendants_cpu(), time.thread_time()
        cpu = spent_since(procs_before, procs_after) + driver_after - driver_before
        # the whole command's CPU: Ray's start-up (its daemons are this process's children) and the build
        cpu_whole = spent_since(procs_start, procs_after) + driver_after - driver_start
        cpu_by_process = by_name(procs_before, procs_after)  # while the cluster is up, so the names are readable
    finally:
        ray.shutdown()
    shard_stats = [json.loads(p.read_text()) for p in sorted((out / "sources" / SOURCE).glob("*_stats.json"))]
    return {
        "wall_s": wall,
        "cpu_s": cpu,  # Ray workers and daemons during the build, plus the driver thread
        "ray_startup_s": startup,
        "cpu_with_startup_s": cpu_whole,
        "cpu_by_process_s": cpu_by_process,  # the build's CPU by process name: shard workers vs Ray's daemons
        "worker_niceness": RAY_DEFAULT_NICENESS if worker_niceness is None else worker_niceness,
        # summed over shard tasks: time inside `process_shard` reading + fetching + decoding + resizing + encoding
        "shard_s_sum": sum(sum(s["timings"].values()) for s in shard_stats),
        "input": report.input_rows,
        "successes": report.by_status.get("success", 0),
        "shards": report.shards,
        "stages": json.loads((out / "build.json").read_text())["stages"],  # each shard stage's share of task time
    }
