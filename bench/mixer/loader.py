"""`python -m bench.mixer.loader`: bench part (c) — StageLoader throughput vs a plain loop that only decodes the JPEGs.

Story: make (or reuse) a LLaVA-mix-like corpus (`bench.lengths.LLAVA_MIX`: six sources, text lengths drawn from the
documented laws, one 336 px JPEG per image sample, ShareGPT text-only) → build it with the real pipeline (shards,
length index with the samples' tokens, a planned stage at seq_len 2048 with 576 image tokens per image) → per round,
the plain loop and the loader, in rotating order. The plain loop is the ceiling a user would compare with: the
planned samples' JPEG bytes already in memory, `Image.open(...).convert("RGB")` each, one process. The loader does
everything a training step needs (index and length-index lookups, ranged tar read of the image, decode, resize,
packing) in `--workers` processes, measured from `iter()` to its last batch, worker start-up included. Target: >= 70%
of the plain loop's images/s.

The loader runs with `TINYMIX_VERIFY=0`; with `--verify`, `loader-verify` is the loader with `TINYMIX_VERIFY=1`
(each member read is checked against the crc32 the index recorded, a stage's default): what integrity checking
costs.

The loader hands over pixels as uint8 bytes; normalising them is the consumer's step (`mixer.batch.normalize_pixels`,
on the trainer's device). Its CPU cost, for a trainer on the CPU, is measured apart and printed, not counted in the
loader's rate. On a shared machine the wall-clock ratio moves with the other load; the CPU-time figures (CPU ms per
image, and the ratio they imply for `--workers` processes on otherwise idle cores, main process included) do not.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import shutil
import statistics
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from bench.lengths import IMAGE_TOKENS, LLAVA_MIX, draw, sample_fractions
from mixer.batch import normalize_pixels
from mixer.build import source_specs
from mixer.contract import CONTRACT, StageContract
from mixer.lengths import TOKENS_SUFFIX, cache_key, write_source_lengths
from mixer.loader import StageLoader
from mixer.loader.rows import TOKEN_CACHE_SHARDS
from mixer.manifest import load_manifest
from mixer.plan import PlanReader
from mixer.planning import plan_one
from mixer.templates.stored import HEADER, read_header, unpack_record
from mixer.tokenizer import train_tokenizer
from shards.build import chunk_rows, source_dir
from shards.index import VERIFY_ENV, ShardReader, merge_index
from shards.readers import get_reader
from shards.task import process_shard

STAGE = "bench"
WORDS = (
    "the a man woman dog cat car bus street table red blue green yellow small large sitting standing holding "
    "picture image shows there is are on in of with and what where how many color book title author sign text "
    "left right top bottom near behind front two three people water building tree sky white black wearing"
).split()
MANIFEST = """
name: loaderbench
output: {out}
seed: 0
sources:
{sources}
shards: {{format: webdataset, samples_per_shard: {per_shard}, image: {{size: {size}, resize_mode: center_crop}}}}
model:
  vision: {{config: {{model_type: clip_vision_model, image_size: {size}, patch_size: 14}}}}
  llm: {{config: {{model_type: llama, vocab_size: 2000}}}}
  tokenizer: {tokenizer}
  image_tokens: {image_tokens}
stages:
  - name: {stage}
    mixture: {{{mixture}}}
    weight_by: samples
    size: {{epochs: 1}}
    seq_len: {seq_len}
    template: llava_v1
    image_size: {size}
    trains: [connector]
    optimizer: {{lr: 1.0e-3}}
    micro_batch: 4
    global_batch: 8
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mixer.loader", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1500, help="Samples in the corpus (all six sources together).")
    p.add_argument("--size", type=int, default=336, help="Stored and stage image side (CLIP-L/336).")
    p.add_argument("--seq-len", type=int, default=2048, help="Packed sequence length.")
    p.add_argument("--workers", type=int, default=2, help="Loader worker processes.")
    p.add_argument("--repeat", type=int, default=3, help="Rounds of each contestant; the median of each is reported.")
    p.add_argument(
        "--verify",
        action="store_true",
        help="Add `loader-verify`: the same loader checking every member it reads against its crc32 (TINYMIX_VERIFY).",
    )
    p.add_argument(
        "--samples-per-shard", type=int, default=500, help="Shard size: smaller gives each source more token files."
    )
    p.add_argument(
        "--token-cache",
        type=int,
        default=TOKEN_CACHE_SHARDS,
        help="Token files (shards) whose offsets each worker keeps per source; 1 makes nearly every read a miss, "
        "as on a source far larger than the cache.",
    )
    p.add_argument("--work", type=Path, default=Path("bench/_work/mixer-loader"), help="Work folder (corpus, build).")
    return p.parse_args(argv)


# ---- corpus and build


def _jpeg(rng: np.random.Generator, size: int) -> bytes:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0, 255, 3) * (1 - xx[..., None]) + rng.uniform(0, 255, 3) * yy[..., None]
    arr = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    for _ in range(6):
        x, y, w = (int(v) for v in rng.integers(0, size, 3))
        img.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), (x, y, x + w // 3, y + w // 4))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words))).capitalize()


def _conversation(rng: random.Random, tokens: int) -> list[dict[str, str]]:
    """Turns of 20-300 words adding up to about `tokens` words: a question, then an answer of the rest."""
    turns, left = [], tokens
    while left > 0:
        q, a = min(left, rng.randint(5, 25)), min(max(left - 25, 1), rng.randint(15, 300))
        turns += [{"from": "human", "value": _text(rng, q) + "?"}, {"from": "gpt", "value": _text(rng, a) + "."}]
        left -= q + a
    return turns


def write_corpus(root: Path, n: int, size: int) -> dict[str, int]:
    """One LLaVA JSON per source of `LLAVA_MIX`, with `n` samples split by the mix's sample fractions."""
    rng, nrng = random.Random(0), np.random.default_rng(0)
    counts = {}
    for law, frac in zip(LLAVA_MIX, sample_fractions(), strict=True):
        k = max(1, round(n * frac))
        lengths, _ = draw(law, k, nrng)
        items = []
        (root / law.name).mkdir(parents=True, exist_ok=True)
        for i, length in enumerate(lengths.tolist()):
            # one token per word with the bench tokenizer: the words are the drawn text length
            words = int(length) - law.images * IMAGE_TOKENS
            item: dict[str, Any] = {"id": f"{law.name}-{i}", "conversations": _conversation(rng, words)}
            if law.images:
                rel = f"{law.name}/{i}.jpg"
                (root / rel).write_bytes(_jpeg(nrng, size))
                item["image"] = rel
                item["conversations"][0]["value"] = "<image>\n" + item["conversations"][0]["value"]
            items.append(item)
        (root / f"{law.name}.json").write_text(json.dumps(items))
        counts[law.name] = k
    return counts


def build(work: Path, n: int, size: int, seq_len: int, per_shard: int = 500) -> Path:
    """Corpus → shards → length index → plan, in `work`; return the build folder.

    Shards are reused when `work/done.json` matches the arguments, the length index when its cache key's files exist
    (a new index format gets a new key, so it is recomputed), the plan when it was made from those length files.
    """
    key = {"n": n, "size": size, "seq_len": seq_len, "per_shard": per_shard}
    done = work / "done.json"
    root, out = work / "data", work / "out"
    if not (done.exists() and json.loads(done.read_text()) == key):
        shutil.rmtree(work, ignore_errors=True)
        write_shards(work, root, out, n, size, seq_len, per_shard)
        done.write_text(json.dumps(key))
    m = load_manifest(work / "manifest.yaml")
    tok = str(work / "tokenizer")
    lkey = cache_key(tok, "llava_v1", IMAGE_TOKENS)
    lengths = {}
    for spec in source_specs(m):
        ldir = str(out / "lengths" / lkey / spec.name)
        lengths[spec.name] = write_source_lengths(source_dir(str(out), spec.name), ldir, tok, "llava_v1", IMAGE_TOKENS)
    planned = (out / "stages" / STAGE / CONTRACT).exists() and StageContract.read(str(out), STAGE).lengths == {
        k: os.path.abspath(v) for k, v in lengths.items()
    }
    if not planned:
        plan_one(m, 0, str(out), lengths)
    return out


def write_shards(work: Path, root: Path, out: Path, n: int, size: int, seq_len: int, per_shard: int) -> None:
    """The corpus, the bench tokenizer, the manifest and every source's shards and merged index."""
    counts = write_corpus(root, n, size)
    train_tokenizer([_text(random.Random(i), 40) for i in range(2000)], work / "tokenizer")
    sources = "\n".join(f"  {s}: {{kind: llava-json, paths: {root}/{s}.json, image_root: {root}}}" for s in counts)
    mixture = ", ".join(f"{s}: {c}" for s, c in counts.items())
    (work / "manifest.yaml").write_text(
        MANIFEST.format(
            out=out,
            sources=sources,
            size=size,
            tokenizer=work / "tokenizer",
            image_tokens=IMAGE_TOKENS,
            stage=STAGE,
            mixture=mixture,
            seq_len=seq_len,
            per_shard=per_shard,
        )
    )
    m = load_manifest(work / "manifest.yaml")
    for spec in source_specs(m):
        src = source_dir(str(out), spec.name)
        for shard, items in chunk_rows(get_reader(spec.kind)(spec), m.shards.samples_per_shard):
            process_shard(items, m.shards, src, shard)
        merge_index(src)


def index_bytes_per_sample(out: Path) -> dict[str, float]:
    """On-disk bytes per sample of the stage's length index, by file kind, and the text ids it stores per sample.

    The merged Parquet the planner reads and the token files the loader reads (the per-shard parts, copies of the
    merged rows kept for resuming, are not counted).
    """
    urls = StageContract.read(str(out), STAGE).lengths.values()
    rows = sum(pq.ParquetFile(u).metadata.num_rows for u in urls)
    token_files = [f for u in urls for f in Path(u).parent.glob(f"*{TOKENS_SUFFIX}")]
    ids = 0
    for f in token_files:
        data = f.read_bytes()
        dtype, n = read_header(data, str(f))
        off = np.frombuffer(data, dtype="<u8", count=n + 1, offset=HEADER.itemsize).tolist()
        ids += sum(len(unpack_record(data[off[j] : off[j + 1]], dtype)[1]) for j in range(n))
    return {
        "lengths_parquet": sum(Path(u).stat().st_size for u in urls) / rows,
        "token_files": sum(f.stat().st_size for f in token_files) / rows,
        "text_ids": ids / rows,
    }


# ---- the contestants


def planned_jpegs(out: Path, sequences: int) -> list[bytes]:
    """The JPEG bytes of every image sample in the first `sequences` planned sequences, in plan order."""
    contract = StageContract.read(str(out), STAGE)
    index = {s: pq.read_table(Path(contract.shards[s]) / "index.parquet").to_pylist() for s in contract.sources}
    readers = {s: ShardReader(contract.shards[s]) for s in contract.sources}
    data = []
    for i, seq in enumerate(PlanReader(out / "stages" / STAGE / "plan").sequences(0)):
        if i == sequences:
            break
        for seg in seq:
            name = contract.sources[seg["source"]]
            got = readers[name].read(index[name][seg["sample"]])
            if got["image"] is not None:
                data.append(got["image"])
    return data


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_plain(jpegs: list[bytes]) -> dict[str, float]:
    t, cpu = time.perf_counter(), time.process_time()
    for b in jpegs:
        with Image.open(io.BytesIO(b)) as im:
            im.convert("RGB")
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"wall_s": wall, "images_per_s": len(jpegs) / wall, "cpu_ms_per_image": cpu / len(jpegs) * 1e3}


def run_loader(out: Path, workers: int, stage: str = STAGE, token_cache: int = TOKEN_CACHE_SHARDS) -> dict[str, float]:
    """One pass over the stage; CPU time of the workers is read from RUSAGE_CHILDREN once they have been joined.

    The first few batches are kept to time the consumer's normalisation on the CPU after the pass.
    """
    children, cpu = _children_cpu(), time.process_time()
    loader = StageLoader(str(out), stage, num_workers=workers, prefetch_factor=4, token_cache_shards=token_cache)
    kept = []
    t = time.perf_counter()
    for batch in loader:  # the exhausted DataLoader iterator joins its workers
        if len(kept) < 16:
            kept.append(batch)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    norm = time.process_time()
    for batch in kept:
        normalize_pixels(batch, "cpu")
    norm = time.process_time() - norm
    s = loader.stats
    return {
        "wall_s": wall,
        "images_per_s": s["images"] / wall,
        "sequences_per_s": s["sequences"] / wall,
        "images": s["images"],
        "sequences": s["sequences"],
        "skipped": s["skipped_total"],
        "worker_cpu_ms_per_image": (_children_cpu() - children) / s["images"] * 1e3,
        "main_cpu_ms_per_image": cpu / s["images"] * 1e3,
        "normalize_cpu_ms_per_image": norm / max(1, sum(int(b["pixel_values"].shape[0]) for b in kept)) * 1e3,
    }


def checksum_us_per_image(jpegs: list[bytes]) -> dict[str, float]:
    """What checking one image costs with the index's crc32 and with a sha256 (the alternative), CPU µs per image."""
    out = {}
    for name, digest in (("crc32", zlib.crc32), ("sha256", lambda b: hashlib.sha256(b).digest())):
        t = time.process_time()
        for b in jpegs:
            digest(b)
        out[f"{name}_us"] = (time.process_time() - t) / len(jpegs) * 1e6
    return out


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(x[k] for x in runs) for k in runs[0]}


def _cpu_bound_ratio(workers: int, plain_cpu: float, med: dict[str, float]) -> float:
    """The ratio on otherwise idle cores (as many as the workers, at most all), from CPU time: load-independent.

    The main process's share is included.
    """
    loader_cpu = med["worker_cpu_ms_per_image"] + med["main_cpu_ms_per_image"]
    return min(workers, os.cpu_count() or 1) * plain_cpu / loader_cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ[VERIFY_ENV] = "0"  # a stage checks checksums by default; `loader-verify` is the one that does here
    work = args.work.resolve()
    t = time.perf_counter()
    out = build(work, args.n, args.size, args.seq_len, args.samples_per_shard)
    print(f"build ready in {time.perf_counter() - t:.1f} s: {out}", flush=True)
    disk = index_bytes_per_sample(out)
    probe = StageLoader(str(out), STAGE, num_workers=0)
    sequences = probe.steps * probe.layout.global_batch
    jpegs = planned_jpegs(out, sequences)
    print(f"{sequences} packed sequences of {args.seq_len} tokens, {len(jpegs)} images", flush=True)
    names = ["plain", "loader"] + (["loader-verify"] if args.verify else [])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(args.repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotating order
            load = os.getloadavg()[0]
            if name == "plain":
                res = run_plain(jpegs)
            elif name == "loader-verify":
                os.environ[VERIFY_ENV] = "1"  # the workers inherit it
                try:
                    res = run_loader(out, args.workers, STAGE, args.token_cache)
                finally:
                    os.environ[VERIFY_ENV] = "0"  # the other contestants do not check
            else:
                res = run_loader(out, args.workers, STAGE, args.token_cache)
            res["load"] = load
            runs[name].append(res)
            print(f"  round {r + 1} {name}: {res['wall_s']:.2f} s, {res['images_per_s']:.1f} images/s", flush=True)
    med = _median(runs["loader"])
    plain = statistics.median(x["images_per_s"] for x in runs["plain"])
    plain_cpu = statistics.median(x["cpu_ms_per_image"] for x in runs["plain"])
    ours, worker_cpu = med["images_per_s"], med["worker_cpu_ms_per_image"]
    summary = {
        "plain_images_per_s": plain,
        "loader_images_per_s": ours,
        "loader_sequences_per_s": med["sequences_per_s"],
        "ratio": ours / plain,
        "target": 0.70,
        "plain_cpu_ms_per_image": plain_cpu,
        "worker_cpu_ms_per_image": worker_cpu,
        "main_cpu_ms_per_image": med["main_cpu_ms_per_image"],
        "normalize_cpu_ms_per_image": med["normalize_cpu_ms_per_image"],
        "cpu_bound_ratio": _cpu_bound_ratio(args.workers, plain_cpu, med),
        "length_index_bytes_per_sample": disk,
    }
    print(f"\nplain decode loop (1 process):  {plain:8.1f} images/s   {plain_cpu:5.2f} ms CPU per image")
    print(
        f"StageLoader ({args.workers} workers, full path): {ours:8.1f} images/s   {worker_cpu:5.2f} ms CPU per image "
        f"in workers + {med['main_cpu_ms_per_image']:.2f} in the main process; "
        f"{med['sequences_per_s']:.1f} packed sequences/s"
    )
    print(
        f"ratio {ours / plain:.2f} (target >= 0.70); from CPU time, {args.workers} workers on idle cores would reach "
        f"{summary['cpu_bound_ratio']:.2f}. {os.cpu_count()} cores, load average {os.getloadavg()}"
    )
    if "loader-verify" in runs:
        summary.update(checksum_us_per_image(jpegs))
        print(
            f"per image, in one process: crc32 {summary['crc32_us']:.1f} us, sha256 {summary['sha256_us']:.1f} us "
            f"(decode: {plain_cpu * 1e3:.0f} us)"
        )
        ver = _median(runs["loader-verify"])
        cpu, cpu_ver = (m["worker_cpu_ms_per_image"] + m["main_cpu_ms_per_image"] for m in (med, ver))
        summary.update(
            verify_images_per_s=ver["images_per_s"],
            verify_rate_ratio=ver["images_per_s"] / ours,
            verify_worker_cpu_ms_per_image=ver["worker_cpu_ms_per_image"],
            verify_cpu_cost=cpu_ver / cpu - 1,
        )
        print(
            f"the same loader checking crc32s (TINYMIX_VERIFY=1): {ver['images_per_s']:8.1f} images/s "
            f"({summary['verify_rate_ratio']:.2f}x the rate without), {ver['worker_cpu_ms_per_image']:5.2f} ms CPU per "
            f"image in workers + {ver['main_cpu_ms_per_image']:.2f} main: {summary['verify_cpu_cost']:+.1%} CPU per "
            "image (the load-independent figure)"
        )
    print(
        f"length index on disk per sample: {disk['lengths_parquet']:.0f} bytes of merged Parquet (planner) + "
        f"{disk['token_files']:.0f} bytes of token files (loader) for {disk['text_ids']:.0f} text ids. "
        f"Token cache: {args.token_cache} shards per source"
    )
    print(
        f"consumer's step, not counted above: normalize_pixels on the CPU {summary['normalize_cpu_ms_per_image']:.2f} "
        "ms per image (on a GPU trainer it runs on the device)"
    )
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": summary}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
