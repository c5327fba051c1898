"""The shard build as a Ray job: the driver streams rows into shards by input position, one Ray task per shard.

Only the shards (no tokenizer, no plans): `mixer.build` runs it, then length-indexes and plans with `mixer.planning`.

Shards a previous run completed from the same rows and options are reused (checked by `shards.resume`), others
rebuilt, shards past a source's new count removed; per-source indexes are merged at the end.

Shard `k` of a source holds input rows `[k*N, (k+1)*N)` (N = samples_per_shard, failures included), so keys and
shard contents depend only on the input, never on scheduling: a resumed or multi-node build equals a local one.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import fsspec
import ray

from shards import fs
from shards.cluster import cluster_cpus, connect, die_with_node
from shards.exclude import Exclusion
from shards.index import MERGED_INDEX, index_id, merge_index
from shards.options import ShardOptions
from shards.progress import progress as progress_bar
from shards.readers import SourceSpec, get_reader
from shards.record import BadRow, Record
from shards.resume import OnDisk, remove_shard, scan_source, shard_made_from, source_made_from, why_rebuild
from shards.task import process_shard
from shards.writer import fingerprint


@dataclass
class SourceReport:
    """What a build did with one source.

    `rebuilt`: reason → shards built again (damaged, or made from other rows or options; new shards are not listed);
    `removed`: shards beyond the source's new shard count, deleted.
    """

    shards: int = 0
    skipped_shards: int = 0
    input_rows: int = 0
    by_status: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    rebuilt: dict[str, list[int]] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)


# Statuses the progress bar does not count as failures.
_NOT_FAILED = ("success", "excluded_benchmark")


class BuildError(RuntimeError):
    """Some shards or sources could not be built; everything else was, and a rerun resumes."""


def _count_rows(specs: list[SourceSpec], bar: Any) -> None:
    """Set `bar.total` to the input rows of every source, counted by reading them once more on this thread.

    Reading the inputs costs little next to fetching and resizing their images, and it runs beside the build; a
    source that cannot be read leaves the bar without a total (the build itself reports the error).
    """
    total = 0
    for spec in specs:
        try:
            total += sum(1 for _ in get_reader(spec.kind)(spec))
        except (OSError, ValueError):
            return
    bar.total = total


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


@dataclass
class _Source:
    """The driver's bookkeeping for one source while its shards are submitted and collected."""

    out_dir: str
    on_disk: dict[int, OnDisk]
    fingerprints: dict[int, str] = field(default_factory=dict)
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)
    changed: bool = False


def build_shards(
    specs: list[SourceSpec],
    opts: ShardOptions,
    out: str,
    *,
    ray_address: str | None = None,
    build_meta: dict[str, Any] | None = None,
    progress: bool = True,
    exclude: Exclusion | None = None,
) -> dict[str, SourceReport]:
    """Build every source's shards under `out/sources/<name>/` and write `out/build.json`.

    `exclude`: image files not to store (benchmark images); such rows get the status `excluded_benchmark`.

    A shard already on disk is reused only when intact and made from the same rows and options (`shards.resume`);
    shards past a source's new count are removed, and the index is merged again from exactly the current shards.
    Raises BuildError at the end if any shard or source failed, after building all the others.
    """
    started = time.perf_counter()
    connect(ray_address)
    startup = time.perf_counter() - started  # about zero when Ray was already up in this process
    task = ray.remote(max_retries=3, retry_exceptions=True, scheduling_strategy="SPREAD")(_shard_task)
    limit = 2 * cluster_cpus()
    exclude_ref = ray.put(exclude) if exclude is not None else None  # shipped to each worker once, not per task
    reports = {s.name: SourceReport() for s in specs}
    state: dict[str, _Source] = {}
    pending: dict[ray.ObjectRef, tuple[str, int, int]] = {}
    bar = progress_bar(desc="shards", unit=" rows", disable=not progress, smoothing=0.1)
    if progress:  # the total (and so an ETA) once a second pass of the readers has counted the input rows
        threading.Thread(target=_count_rows, args=(specs, bar), name="tinymix-count-rows", daemon=True).start()
    t0 = time.perf_counter()
    failed = [0]

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
            state[name].stats[shard] = stats
            bar.update(n)
            failed[0] += sum(v for k, v in stats["counts"].items() if k not in _NOT_FAILED)
            bar.set_postfix(failed=failed[0], refresh=False)

    for spec in specs:
        src = state[spec.name] = _Source(source_dir(out, spec.name), scan_source(source_dir(out, spec.name)))
        rep, part = reports[spec.name], source_made_from(spec, opts)
        if exclude is not None:  # another exclusion set may store other samples: recorded, so a change rebuilds
            part["exclude_images"] = exclude.ident
        try:
            for shard, items in chunk_rows(get_reader(spec.kind)(spec), opts.samples_per_shard):
                rep.shards += 1
                rep.input_rows += len(items)
                made_from = shard_made_from(part, items)
                src.fingerprints[shard] = fingerprint(made_from)
                reason = why_rebuild(src.on_disk.get(shard), made_from)
                if reason is None:
                    rep.skipped_shards += 1
                    src.stats[shard] = src.on_disk[shard].stats or {}
                    bar.update(len(items))
                    continue
                if not src.changed:  # the merged index no longer describes the shards: drop it before any change
                    src.changed = True
                    fs.remove(fs.join(src.out_dir, MERGED_INDEX))
                if reason != "new":
                    rep.rebuilt.setdefault(reason, []).append(shard)
                while len(pending) >= limit:
                    collect(block=True)
                ref = task.remote(items, opts, src.out_dir, shard, made_from, exclude_ref)
                pending[ref] = (spec.name, shard, len(items))
        except (OSError, ValueError) as e:  # a whole input file unreadable: report, go on with other sources
            rep.errors.append(f"{spec.name}: {e}")
    while pending:
        collect(block=True)
    bar.close()

    for spec in specs:
        _finish_source(state[spec.name], reports[spec.name])
    stages = {"ray_startup": startup, **_stage_seconds(s for src in state.values() for s in src.stats.values())}
    meta = dict(build_meta or {})
    if exclude is not None:
        meta.setdefault("decontamination", {})["excluded"] = {
            name: r.by_status.get("excluded_benchmark", 0) for name, r in reports.items()
        }
    _write_build_json(out, opts, reports, meta, time.perf_counter() - t0, stages)
    errors = [e for r in reports.values() for e in r.errors]
    if errors:
        raise BuildError("\n".join(errors))
    return reports


def _shard_task(
    items: list[Record | BadRow],
    opts: ShardOptions,
    out_dir: str,
    shard: int,
    made_from: dict[str, Any],
    exclude: Exclusion | None,
) -> dict[str, Any]:
    """`process_shard` in a worker that dies with its node, so no shard is published after its build was killed."""
    die_with_node()
    return process_shard(items, opts, out_dir, shard, made_from, exclude)


def _finish_source(src: _Source, rep: SourceReport) -> None:
    """Count statuses; unless something failed, remove the shards past the new count and merge the index again."""
    shards = sorted(src.fingerprints)
    rep.by_status = sum((Counter(src.stats[s]["counts"]) for s in shards if s in src.stats), Counter())
    if rep.errors:  # shards are missing or the rows were not all read: leave no index that plans could trust
        fs.remove(fs.join(src.out_dir, MERGED_INDEX))
        return
    rep.removed = sorted(set(src.on_disk) - set(src.fingerprints))
    if rep.removed and not src.changed:
        src.changed = True
        fs.remove(fs.join(src.out_dir, MERGED_INDEX))
    for shard in rep.removed:
        remove_shard(src.out_dir, shard)
    ident = hashlib.sha256("\n".join(src.fingerprints[s] for s in shards).encode()).hexdigest()
    merged = fs.join(src.out_dir, MERGED_INDEX)
    if src.changed or not fs.exists(merged) or index_id(merged) != ident:  # e.g. an index merged by an older tinymix
        merge_index(src.out_dir, shards, ident)


def _stage_seconds(stats: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Each shard stage's seconds (`shards.task.process_shard` timings) summed over the shards built."""
    total: Counter[str] = Counter()
    for s in stats:
        total.update(s.get("timings", {}))
    return dict(total)


def _write_build_json(
    out: str,
    opts: ShardOptions,
    reports: dict[str, SourceReport],
    meta: dict[str, Any],
    seconds: float,
    stages: dict[str, float],
) -> None:
    # `seconds` is the build after Ray is up; `stages` has the start-up and the shard tasks' stages summed over
    # tasks (task seconds run in parallel, so their shares are of the tasks' time, not of `seconds`).
    task_s = sum(v for k, v in stages.items() if k != "ray_startup")
    versions = {p: _version(p) for p in ("tinymix", "ray", "pyarrow", "pillow", "webdataset")}
    doc = {
        **meta,
        "versions": versions,
        "shards": opts.model_dump(),
        "seconds": round(seconds, 3),
        "ray_startup_seconds": round(stages["ray_startup"], 3),
        "stages": {
            k: {"seconds": round(v, 3), "share_of_task_time": round(v / task_s, 4) if task_s else None}
            for k, v in stages.items()
            if k != "ray_startup"
        },
        "sources": {
            name: {
                "input_rows": r.input_rows,
                "shards": r.shards,
                "skipped_shards": r.skipped_shards,
                "counts": dict(sorted(r.by_status.items())),
                "errors": r.errors,
                "rebuilt": {reason: shards for reason, shards in sorted(r.rebuilt.items())},
                "removed": r.removed,
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
