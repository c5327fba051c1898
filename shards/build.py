"""The shard build as a Ray job: the driver streams rows into shards by input position, one Ray task per shard.

Shards a previous run completed are skipped; per-source indexes are merged at the end.

Shard `k` of a source holds input rows `[k*N, (k+1)*N)` (N = samples_per_shard, failures included), so keys and
shard contents depend only on the input, never on scheduling: a resumed or multi-node build equals a local one.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import fsspec
import ray
from tqdm import tqdm

from shards import fs
from shards.cluster import cluster_cpus, connect
from shards.index import merge_index
from shards.options import ShardOptions
from shards.readers import SourceSpec, get_reader
from shards.record import BadRow, Record
from shards.task import process_shard
from shards.writer import complete_shards


@dataclass
class SourceReport:
    """What a build did with one source."""

    shards: int = 0
    skipped_shards: int = 0
    input_rows: int = 0
    by_status: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


class BuildError(RuntimeError):
    """Some shards or sources could not be built; everything else was, and a rerun resumes."""


def chunk_rows(items: Iterable[Record | BadRow], per_shard: int) -> Iterator[tuple[int, list[Record | BadRow]]]:
    """Group a source's rows into (shard, rows) by input position."""
    shard, buf = 0, []
    for item in items:
        k = item.row // per_shard
        if k != shard and buf:
            yield shard, buf
            buf = []
        shard = k
        buf.append(item)
    if buf:
        yield shard, buf


def source_dir(out: str, name: str) -> str:
    return fs.join(out, "sources", name)


def build_shards(
    specs: list[SourceSpec],
    opts: ShardOptions,
    out: str,
    *,
    ray_address: str | None = None,
    build_meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, SourceReport]:
    """Build every source's shards under `out/sources/<name>/` and write `out/build.json`.

    Raises BuildError at the end if any shard or source failed, after building all the others.
    """
    connect(ray_address)
    task = ray.remote(max_retries=3, retry_exceptions=True, scheduling_strategy="SPREAD")(process_shard)
    limit = 2 * cluster_cpus()
    reports = {s.name: SourceReport() for s in specs}
    pending: dict[ray.ObjectRef, tuple[str, int, int]] = {}
    bar = tqdm(desc="shards", unit=" rows", disable=not progress, smoothing=0.1)
    t0 = time.perf_counter()

    def collect(block: bool) -> None:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if block else 0)
        for ref in ready:
            name, shard, n = pending.pop(ref)
            rep = reports[name]
            try:
                stats = ray.get(ref)
            except Exception as e:  # a task that failed after its retries: the shard stays missing, rerun resumes
                rep.errors.append(f"{name} shard {shard:05d}: {type(e).__name__}: {str(e).splitlines()[-1]}")
                continue
            rep.by_status.update(stats["counts"])
            bar.update(n)
            failed = sum(v for r in reports.values() for k, v in r.by_status.items() if k != "success")
            bar.set_postfix(failed=failed, refresh=False)

    for spec in specs:
        out_dir = source_dir(out, spec.name)
        done = set(complete_shards(out_dir))
        rep = reports[spec.name]
        try:
            for shard, items in chunk_rows(get_reader(spec.kind)(spec), opts.samples_per_shard):
                rep.shards += 1
                rep.input_rows += len(items)
                if shard in done:
                    rep.skipped_shards += 1
                    bar.update(len(items))
                    continue
                while len(pending) >= limit:
                    collect(block=True)
                pending[task.remote(items, opts, out_dir, shard)] = (spec.name, shard, len(items))
        except (OSError, ValueError) as e:  # a whole input file unreadable: report, go on with other sources
            rep.errors.append(f"{spec.name}: {e}")
    while pending:
        collect(block=True)
    bar.close()

    for spec in specs:
        out_dir = source_dir(out, spec.name)
        if reports[spec.name].shards and not reports[spec.name].errors:
            merge_index(out_dir)
        _count_from_disk(out_dir, reports[spec.name])
    _write_build_json(out, opts, reports, build_meta or {}, time.perf_counter() - t0)
    errors = [e for r in reports.values() for e in r.errors]
    if errors:
        raise BuildError("\n".join(errors))
    return reports


def _count_from_disk(out_dir: str, rep: SourceReport) -> None:
    """Status counts over all complete shards, those skipped on resume included."""
    total: Counter = Counter()
    for shard in complete_shards(out_dir):
        with fsspec.open(fs.join(out_dir, f"{shard:05d}_stats.json"), "rb") as f:
            total.update(json.load(f)["counts"])
    rep.by_status = total


def _write_build_json(
    out: str, opts: ShardOptions, reports: dict[str, SourceReport], meta: dict[str, Any], seconds: float
) -> None:
    versions = {p: _version(p) for p in ("tinymix", "ray", "pyarrow", "pillow", "webdataset")}
    doc = {
        **meta,
        "versions": versions,
        "shards": opts.model_dump(),
        "seconds": round(seconds, 3),
        "sources": {
            name: {
                "input_rows": r.input_rows,
                "shards": r.shards,
                "skipped_shards": r.skipped_shards,
                "counts": dict(sorted(r.by_status.items())),
                "errors": r.errors,
            }
            for name, r in reports.items()
        },
    }
    with fsspec.open(fs.join(out, "build.json"), "wb", auto_mkdir=True) as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
