"""`python -m bench.shards.run`: tinymix's shard build against img2dataset on the same URL list, in one run.

Story: generate (or reuse) the JPEGs → serve them on 127.0.0.1 → install (or reuse) img2dataset in its own venv →
per round, img2dataset, tinymix (and its optional variants) and the PIL ceiling one after the other (img2dataset
and tinymix swap order on odd rounds) → print the table and write `results.json`. See bench/shards/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.shards.ceiling import run_ceiling
from bench.shards.corpus import describe, ensure_images, write_inputs
from bench.shards.ours import RAY_DEFAULT_NICENESS, bench_options, run_tinymix
from bench.shards.peer import PeerUnavailable, ensure_img2dataset, img2dataset_command, run_img2dataset
from bench.shards.report import CEILING, OURS, PEER, WHAT_IF, format_table, summarise
from bench.shards.whatif import PATCHES
from shards.options import ShardOptions
from shards.serve import serve_folder

RAY_DEFAULT_ROW = f"tinymix, Ray's default worker nice {RAY_DEFAULT_NICENESS}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.shards.run", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="Number of JPEGs (URLs); at least 2000 for the issue's claim.")
    p.add_argument(
        "--distinct",
        type=int,
        default=None,
        help="Generate only this many images; the rest of --n are hard links cycling through them (own --work).",
    )
    p.add_argument("--processes", type=int, default=2, help="Processes of each tool (Ray CPUs / processes_count).")
    p.add_argument("--threads", type=int, default=32, help="Download threads per process, both tools.")
    p.add_argument(
        "--per-host",
        type=int,
        default=None,
        help="tinymix's per-host cap (default: --threads; img2dataset has none and every URL is on one host here).",
    )
    p.add_argument("--size", type=int, default=224, help="Target side (center_crop).")
    p.add_argument("--per-shard", type=int, default=1000, help="Samples per shard, both tools.")
    p.add_argument("--repeat", type=int, default=1, help="Rounds of everything; medians are reported.")
    p.add_argument("--work", type=Path, default=Path("bench/_work/shards"), help="Work folder (cache + outputs).")
    p.add_argument("--skip-img2dataset", action="store_true", help="Run only tinymix and the ceiling.")
    p.add_argument(
        "--ray-worker-niceness",
        type=int,
        default=0,
        help=f"Nice value of tinymix's Ray workers. Ray's default is {RAY_DEFAULT_NICENESS}; 0 (the default here) "
        "matches img2dataset's processes, which matters when other jobs load the machine.",
    )
    p.add_argument(
        "--also-ray-default-niceness",
        action="store_true",
        help=f"Also run tinymix with Ray's default worker nice {RAY_DEFAULT_NICENESS}, as a separate row.",
    )
    p.add_argument(
        "--what-if",
        action="append",
        default=[],
        choices=sorted(PATCHES),
        help="Also run tinymix with this bench.shards.whatif patch in every Ray worker (repeatable).",
    )
    return p.parse_args(argv)


@dataclass(frozen=True)
class Variant:
    """One tinymix row: a what-if patch (None: as shipped) and the Ray workers' nice value (None: Ray's)."""

    key: str
    what_if: str | None
    niceness: int | None


def tinymix_variants(args: argparse.Namespace) -> list[Variant]:
    rows = [Variant(OURS, None, args.ray_worker_niceness)]
    if args.also_ray_default_niceness:
        rows.append(Variant(RAY_DEFAULT_ROW, None, None))
    rows += [Variant(WHAT_IF + name, name, args.ray_worker_niceness) for name in args.what_if]
    return rows


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed(name: str, fn: Any, *args: Any) -> dict[str, Any]:
    load = _load()
    print(f"  {name} ...", end="", flush=True)
    result = fn(*args)
    result["load_before"], result["load_after"] = load, _load()
    print(f" {result['wall_s']:.1f} s", flush=True)
    return result


def run_rounds(
    args: argparse.Namespace, work: Path, images: list[Path], opts: ShardOptions, peer_exe: Path | None
) -> tuple[dict[str, list[dict[str, Any]]], list[str] | None, str | None]:
    """All rounds against one server; the runs by row, the img2dataset command and its error, if any."""
    variants = tinymix_variants(args)
    runs: dict[str, list[dict[str, Any]]] = {PEER: [], **{v.key: [] for v in variants}, CEILING: []}
    peer_cmd, peer_error = None, None
    with serve_folder(work / "www") as base_url:
        inputs = write_inputs(work, base_url, args.n)
        peer_out = work / "out-img2dataset"
        if peer_exe is not None:
            peer_cmd = img2dataset_command(
                peer_exe, inputs["parquet"], peer_out, args.processes, args.threads, args.size, args.per_shard
            )
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat} (load average {_load()})", flush=True)
            order: list[Variant | None] = [None, *variants] if r % 2 == 0 else [variants[0], None, *variants[1:]]
            for v in order:
                if v is not None:
                    # a what-if's shards go elsewhere, so `bench.shards.quality` reads tinymix as shipped
                    out = work / ("out-tinymix" if v.what_if is None else f"out-tinymix-{v.what_if}")
                    run = (inputs["tsv"], out, args.processes, opts, v.what_if, v.niceness)
                    runs[v.key].append(_timed(v.key, run_tinymix, *run))
                elif peer_cmd is not None and peer_error is None:
                    try:
                        runs[PEER].append(_timed(PEER, run_img2dataset, peer_cmd, peer_out, work / "img2dataset.log"))
                    except PeerUnavailable as e:
                        peer_error = str(e)
                        print(f"\nimg2dataset failed, going on without it: {e}", flush=True)
            runs[CEILING].append(_timed("ceiling (1 process, PIL)", run_ceiling, images, args.size))
    return runs, peer_cmd, peer_error


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    started_load = _load()
    images = ensure_images(work / "www" / "images", args.n, args.processes, args.distinct)
    opts = bench_options(args.size, args.per_shard, args.threads, args.per_host or args.threads)

    peer_exe, peer_version, peer_error = None, None, None
    if not args.skip_img2dataset:
        try:
            peer_exe, peer_version = ensure_img2dataset(work)
        except PeerUnavailable as e:
            peer_error = str(e)
            print(f"img2dataset unavailable, running tinymix and the ceiling only: {e}", flush=True)

    runs, peer_cmd, run_error = run_rounds(args, work, images, opts, peer_exe)
    peer_error = peer_error or run_error
    summary = summarise(runs, cores, args.processes)
    results = {
        "command": "python -m bench.shards.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cores": cores,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_at_start": started_load,
            "load_at_end": _load(),
        },
        "versions": {"img2dataset": peer_version, **{p: _version(p) for p in ("tinymix", "ray", "pillow")}},
        "img2dataset_command": peer_cmd,
        "img2dataset_error": peer_error,
        "tinymix_options": opts.model_dump(),
        "corpus": describe(images),
        "runs": runs,
        "summary": summary,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(format_table(summary, runs))
    print(f"load average at start {started_load}, at end {_load()}; results: {work / 'results.json'}")
    if peer_error:
        print(f"img2dataset: {peer_error}")
    return results


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
