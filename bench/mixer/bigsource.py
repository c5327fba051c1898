"""`python -m bench.mixer.bigsource`: the loader on a source of 1M index rows in shards of 10,000, in plan order.

Story: build bench (c)'s corpus (`bench.mixer.loader.build`) → grow its `vqa` source's first shard into a source
`big` of `--shards` shards of 10,000 rows (img2dataset's default), each shard its base shard's rows repeated: the
tar and the token file are hard links / copies of one shard, the index, length index, `rows.npy` and `.npy` columns
are written for all rows, so every lookup is a real lookup in a 1M-row index → plan a stage over `big` with the real
planner → per round, in rotating order: the plain decode loop (the planned JPEG bytes in memory, decoded in one
process), the loader reading index rows from `rows.npy` (`FixedRows`), and the loader reading them from
`index.parquet` a row group at a time (`IndexRows`, what it did before: the same stage over a copy of the length
index without `rows.npy`). Reported: images/s (median of rounds) and the ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.mixer.loader import IMAGE_TOKENS, STAGE, build, run_loader, run_plain
from mixer.lengths import (
    COLUMN_FILES,
    FORMAT_META,
    LENGTH_FORMAT,
    LENGTH_SCHEMA,
    ROWS_FILE,
    _Columns,
    tokens_url,
    write_rows,
)
from mixer.loader.rows import FixedRows
from mixer.plan import PlanReader, PlanSpec, SourceInput, plan_stage
from mixer.planning import UsableLengths, read_lengths
from mixer.templates.stored import HEADER, pack_tokens, read_header
from shards.build import source_dir
from shards.index import MERGED_INDEX, ShardReader, shard_name

BIG, BEFORE = "big", "big-parquet-rows"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mixer.bigsource", description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=100, help="Shards of the big source.")
    p.add_argument("--per-shard", type=int, default=10_000, help="Rows per shard.")
    p.add_argument("--sequences", type=int, default=384, help="Packed sequences of 2048 tokens in the stage.")
    p.add_argument("--workers", type=int, default=2, help="Loader worker processes.")
    p.add_argument("--repeat", type=int, default=3, help="Rounds; the median is reported.")
    p.add_argument("--work", type=Path, default=Path("bench/_work/mixer-loader"), help="bench (c)'s work folder.")
    return p.parse_args(argv)


def grow(out: Path, lkey: str, shards: int, per_shard: int) -> None:
    """Write source `big` (and its length index under `lkey`) from the first shard of `vqa`."""
    base, big = Path(source_dir(str(out), "vqa")), Path(source_dir(str(out), BIG))
    lbase, lbig = out / "lengths" / lkey / "vqa", out / "lengths" / lkey / BIG
    shutil.rmtree(big, ignore_errors=True)
    shutil.rmtree(lbig, ignore_errors=True)
    big.mkdir(parents=True)
    lbig.mkdir(parents=True)
    index = pq.read_table(base / MERGED_INDEX)
    first = index.filter(pc.equal(index.column("shard"), 0))
    k = first.num_rows
    reps = -(-per_shard // k)
    pick = np.tile(np.arange(k), reps)[:per_shard]
    lengths = pq.read_table(lbase / "lengths.parquet").slice(0, k).take(pick)
    token_bytes = Path(tokens_url(str(lbase), 0)).read_bytes()
    dtype, rows = read_header(token_bytes, "vqa")
    off = np.frombuffer(token_bytes, dtype="<u8", count=rows + 1, offset=HEADER.itemsize).tolist()
    records = [token_bytes[off[j] : off[j + 1]] for j in range(rows)]
    shard_tokens = pack_tokens([records[j] for j in pick.tolist()], dtype)
    (lbig / "proto.tokens").write_bytes(shard_tokens)
    columns = _Columns(str(lbig))
    schema = LENGTH_SCHEMA.with_metadata({FORMAT_META: str(LENGTH_FORMAT).encode()})
    with (
        pq.ParquetWriter(big / MERGED_INDEX, first.schema) as wi,
        pq.ParquetWriter(lbig / "lengths.parquet", schema) as wl,
    ):
        for s in range(shards):
            os.link(base / shard_name(0, "webdataset"), big / shard_name(s, "webdataset"))
            os.link(lbig / "proto.tokens", tokens_url(str(lbig), s))
            part = first.take(pick)
            part = part.set_column(
                part.schema.get_field_index("shard"), "shard", pa.array(np.full(per_shard, s, np.int32))
            )
            row = pa.array(np.arange(s * per_shard, (s + 1) * per_shard))
            part = part.set_column(part.schema.get_field_index("row"), first.schema.field("row"), row)
            wi.write_table(part.cast(first.schema), row_group_size=per_shard)
            wl.write_table(lengths.cast(schema), row_group_size=per_shard)
            columns.add(lengths)
    columns.close()
    (lbig / "proto.tokens").unlink()
    write_rows(str(big), str(lbig / ROWS_FILE))


def stage(out: Path, name: str, lengths_url: str, sequences: int) -> None:
    """Plan a stage of `sequences` over `big` (tokens, seq_len 2048) with a stage.json like bench (c)'s."""
    lens, ends, images = read_lengths(lengths_url)
    src = SourceInput(BIG, 1.0, UsableLengths(lens), ends, images)
    summary = plan_stage([src], PlanSpec(2048, "tokens", 0, num_sequences=sequences), out / "stages" / name / "plan")
    meta = json.loads((out / "stages" / STAGE / "stage.json").read_text())
    meta.update(stage=name, sources=[BIG], lengths={BIG: lengths_url}, num_sequences=summary.num_sequences)
    (out / "stages" / name / "stage.json").write_text(json.dumps(meta, indent=2) + "\n")


def planned_jpegs(out: Path, rows_url: str) -> list[bytes]:
    rows, reader = FixedRows(rows_url), ShardReader(source_dir(str(out), BIG))
    data = []
    for seq in PlanReader(out / "stages" / BIG / "plan").sequences(0):
        for seg in seq:
            got = reader.read(rows.row(int(seg["sample"])))
            if got["image"] is not None:
                data.append(got["image"])
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = args.work.resolve()
    out = build(work, 1500, 336, 2048)
    lkey = Path(json.loads((out / "stages" / STAGE / "stage.json").read_text())["lengths"]["vqa"]).parent.parent.name
    t = time.perf_counter()
    grow(out, lkey, args.shards, args.per_shard)
    lbig = out / "lengths" / lkey / BIG
    bare = out / "lengths" / f"{lkey}-no-rows" / BIG  # the same length index without rows.npy: IndexRows
    shutil.rmtree(bare, ignore_errors=True)
    shutil.copytree(lbig, bare, ignore=shutil.ignore_patterns(ROWS_FILE, *(f"{c}.npy" for c in COLUMN_FILES)))
    stage(out, BIG, str(lbig / "lengths.parquet"), args.sequences)
    shutil.rmtree(out / "stages" / BEFORE, ignore_errors=True)
    shutil.copytree(out / "stages" / BIG, out / "stages" / BEFORE)
    meta = json.loads((out / "stages" / BEFORE / "stage.json").read_text())
    meta.update(stage=BEFORE, lengths={BIG: str(bare / "lengths.parquet")})
    (out / "stages" / BEFORE / "stage.json").write_text(json.dumps(meta, indent=2) + "\n")
    rows = pq.read_metadata(out / "sources" / BIG / MERGED_INDEX).num_rows
    jpegs = planned_jpegs(out, str(lbig / ROWS_FILE))
    print(f"source {BIG}: {rows:,} index rows in {args.shards} shards, built in {time.perf_counter() - t:.1f} s; ")
    print(f"stage of {args.sequences} sequences holds {len(jpegs)} images", flush=True)
    names = ["plain", "loader (rows.npy)", "loader (index.parquet)"]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name == "plain":
                res = run_plain(jpegs)
            else:
                res = run_loader(out, args.workers, BIG if "rows.npy" in name else BEFORE)
            res["load"] = os.getloadavg()[0]
            runs[name].append(res)
            print(f"  round {r + 1} {name}: {res['wall_s']:.2f} s, {res['images_per_s']:.1f} images/s", flush=True)
    plain = statistics.median(x["images_per_s"] for x in runs["plain"])
    summary = {n: statistics.median(x["images_per_s"] for x in runs[n]) for n in names}
    print("\n| contestant | images/s (median) | ratio to plain |\n|---|---|---|")
    for n in names:
        print(f"| {n} | {summary[n]:.1f} | {summary[n] / plain:.2f} |")
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()}; {args.workers} workers, image tokens {IMAGE_TOKENS}"
    )
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "images_per_s": summary}
    (work / "bigsource.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
