"""`python -m bench.mixer.lookups`: what one index-row lookup costs the loader on a LAION-size source, in plan order.

Story: write a source index of `--rows` rows (default 1,000,000) in shards of `--per-shard` (default 10,000,
img2dataset's default), one row group a shard as `shards.index.merge_index` writes it → write its fixed-width
`rows.npy` as the length index does (`mixer.lengths.write_rows`, timed) → plan one epoch over the source with the
real planner and take its first `--lookups` samples: the order the loader asks for rows in → per round, in rotating
order, each contestant looks every one of them up, fresh (nothing cached at the start):

- `parquet`: `IndexRows` as the loader used it, a row group decoded into Python lists per miss, 262,144 rows cached;
- `parquet, 1k rows/shard`: the same over an index of 1,000-row shards (the figure the issue quotes);
- `fixed, mmap`: `FixedRows` over the local file (a page of a memory map per row);
- `fixed, ranged read`: `FixedRows` behind an fsspec URL (`memory://`: one `cat_file` range per row, no network).

Reported: microseconds per lookup (median of rounds), the share of lookups that missed the Parquet cache, and the
bytes per row of each file. Target: <= 100 µs per lookup on a cache miss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixer.lengths import write_rows
from mixer.loader.rows import FixedRows, IndexRows
from mixer.plan import PlanSpec, SourceInput, iter_plan
from shards.index import INDEX_SCHEMA, MERGED_INDEX


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mixer.lookups", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="Rows of the source's index.")
    p.add_argument("--per-shard", type=int, default=10_000, help="Rows per shard (one row group each).")
    p.add_argument("--lookups", type=int, default=3000, help="Lookups per contestant and round, in plan order.")
    p.add_argument("--repeat", type=int, default=3, help="Rounds; the median is reported.")
    p.add_argument("--work", type=Path, default=Path("bench/_work/mixer-lookups"), help="Work folder.")
    return p.parse_args(argv)


def write_index(folder: Path, rows: int, per_shard: int) -> None:
    """An `index.parquet` of a tar source: img2dataset-style keys, a row group per shard."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(folder / MERGED_INDEX, INDEX_SCHEMA) as w:
        for start in range(0, rows, per_shard):
            n = min(per_shard, rows - start)
            idx = np.arange(start, start + n)
            size = rng.integers(5_000, 60_000, n)
            offset = np.cumsum(np.concatenate([[512], size[:-1] + 2048]))
            cols: dict[str, Any] = {
                "key": pa.array([f"{i:09d}" for i in idx.tolist()]),
                "row": idx,
                "shard": np.full(n, start // per_shard, np.int32),
                "source": pa.array(["laion"] * n),
                "n_images": np.ones(n, np.int32),
                "text_chars": rng.integers(20, 200, n).astype(np.int32),
                "image_ext": pa.array(["jpg"] * n),
                "image_offset": offset,
                "image_size": size,
                "json_offset": offset + size + 512,
                "json_size": np.full(n, 400),
                "txt_offset": offset + size + 1536,
                "txt_size": np.full(n, 60),
                "row_group": np.full(n, -1, np.int32),
                "row_in_group": np.full(n, -1, np.int32),
            }
            w.write_table(pa.table(cols, schema=INDEX_SCHEMA), row_group_size=n)


def plan_order(rows: int, lookups: int) -> list[int]:
    """The first `lookups` samples the planner places from one source of `rows` (caption-like lengths)."""
    lengths = np.random.default_rng(1).integers(40, 120, rows).astype(np.int32)
    spec = PlanSpec(seq_len=2048, weight_by="tokens", seed=0, num_sequences=rows)
    order: list[int] = []
    for window in iter_plan([SourceInput("laion", 1.0, lengths)], spec):
        order += window.segments["sample"].tolist()
        if len(order) >= lookups:
            return order[:lookups]
    return order


def timed(reader: Any, order: list[int]) -> float:
    """Microseconds per lookup of every row in `order` on a fresh reader."""
    t = time.perf_counter()
    for i in order:
        reader.row_at(i)
    return (time.perf_counter() - t) / len(order) * 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = args.work.resolve()
    big, small = work / f"index-{args.per_shard}", work / "index-1000"
    for folder, per in ((big, args.per_shard), (small, 1000)):
        if not (folder / MERGED_INDEX).exists() or pq.read_metadata(folder / MERGED_INDEX).num_rows != args.rows:
            write_index(folder, args.rows, per)
    t = time.perf_counter()
    write_rows(str(big), str(work / "rows.npy"))
    write_s = time.perf_counter() - t
    fsspec.filesystem("memory").pipe("/lookups/rows.npy", (work / "rows.npy").read_bytes())
    order = plan_order(args.rows, args.lookups)
    groups = {i // args.per_shard for i in order}
    print(
        f"{args.rows:,} rows in shards of {args.per_shard:,}; rows.npy written in {write_s:.1f} s; {len(order)} lookups"
    )
    print(f"in plan order touching {len(groups)} of {-(-args.rows // args.per_shard)} row groups", flush=True)
    contestants = {
        "parquet": lambda: IndexRows(str(big / MERGED_INDEX)),
        "parquet, 1k rows/shard": lambda: IndexRows(str(small / MERGED_INDEX)),
        "fixed, mmap": lambda: FixedRows(str(work / "rows.npy")),
        "fixed, ranged read": lambda: FixedRows("memory://lookups/rows.npy"),
    }
    names = list(contestants)
    runs: dict[str, list[float]] = {n: [] for n in names}
    misses: dict[str, float] = {}
    for r in range(args.repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            reader = contestants[name]()
            decoded = []
            if isinstance(reader, IndexRows):  # count the row groups it decodes: its cache misses
                convert = reader._convert
                reader._convert = lambda t, c=convert, d=decoded: d.append(1) or c(t)  # type: ignore[method-assign]
            runs[name].append(timed(reader, order))
            misses[name] = len(decoded) / len(order) if isinstance(reader, IndexRows) else 1.0
            reader.close()
    summary = {n: statistics.median(v) for n, v in runs.items()}
    sizes = {
        "index.parquet": (big / MERGED_INDEX).stat().st_size / args.rows,
        "rows.npy": (work / "rows.npy").stat().st_size / args.rows,
    }
    print("\n| lookup | µs per lookup (median) | cache misses |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {summary[name]:.1f} | {100 * misses.get(name, 1.0):.0f}% |")
    print(f"\nbytes per row: index.parquet {sizes['index.parquet']:.0f}, rows.npy {sizes['rows.npy']:.0f}")
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "us_per_lookup": summary}
    results.update(miss_share=misses, bytes_per_row=sizes, write_rows_s=write_s)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
