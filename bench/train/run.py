"""`python -m bench.train.run`: bench/train — the loader's overhead on training step time, tokens/s, and MFU on a GPU.

Story: derive two manifests from `manifests/demo.yaml` — the demo's `multitask` stage on the tiny demo model, and the
same data at seq_len 512 on a ~100M-parameter model — and build their shards, length index and plans from the demo
corpus into `--work` (no Ray: the corpus is ~1,200 samples) → (1) tiny config, one DeepSpeed engine: collect the
stage's micro batches from `StageLoader` into a list, then `--rounds` rounds of two runs in alternating order, the
same steps fed by a fresh `StageLoader` with `--workers` processes and from that list; overhead = loader-fed /
memory-fed step time - 1 per round, median over rounds (target <= 5%) → (2) tokens/s of both configs with the real
loader → (3) on CUDA, MFU from model FLOPs per token; on a CPU, how much slower bf16 would be.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mixer.batch import PackedBatch, normalize_pixels
from mixer.build import source_specs
from mixer.lengths import cache_key, write_source_lengths
from mixer.loader import StageLoader
from mixer.manifest import Manifest, load_manifest
from mixer.manifest.merge import deep_merge
from mixer.manifest.stages import StageConfig
from mixer.planning import plan_one
from mixer.tokenizer import load_tokenizer
from shards.build import chunk_rows, source_dir
from shards.index import merge_index
from shards.readers import get_reader
from shards.task import process_shard
from train.engine import build_engine
from train.freeze import freeze_stage
from train.loop import train_step
from train.model import build_vlm
from train.stagerun import StageRun

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo.yaml"
DEMO_STAGE = "multitask"  # the demo's heaviest stage: five VQA/OCR sources, seq_len 384, 96 px images
# ~100M parameters: a llama LM of ~88M (hidden 768, 12 layers, the demo tokenizer's vocabulary) and a CLIP tower of
# ~11M (hidden 384, 6 layers, /16 patches: 196 image tokens at 224 px, as the tiny tower plans them too).
M100_MODEL: dict[str, Any] = {
    "vision": {
        "config": {
            "hidden_size": 384,
            "intermediate_size": 1536,
            "num_hidden_layers": 6,
            "num_attention_heads": 6,
            "image_size": 224,
            "patch_size": 16,
        }
    },
    "llm": {
        "config": {
            "hidden_size": 768,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "num_key_value_heads": 12,
            "max_position_embeddings": 1024,
        }
    },
}
# Everything trains, so 6 × parameters is the honest FLOP count per token (no frozen tower).
M100_STAGE: dict[str, Any] = {
    "name": "m100",
    "seq_len": 512,
    "image_size": 224,
    "trains": ["vision", "connector", "llm"],
    "optimizer": {"lr": 2.0e-5, "warmup_steps": 1},
}
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, fp32 accumulation. A key matches
# whole words of torch.cuda.get_device_name() ("A10" does not match "A10G" or "A100"); first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX A6000", 154.8),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
)
NOT_A_CHECKPOINT = "none (benchmark run)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train.run", description=__doc__.splitlines()[0])
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps before each timed run (tiny config).")
    p.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per run (tiny config).")
    p.add_argument(
        "--rounds", type=int, default=5, help="Rounds of one loader and one in-memory run each, order alternating."
    )
    p.add_argument("--workers", type=int, default=2, help="StageLoader worker processes.")
    p.add_argument("--m100-warmup", type=int, default=1, help="Untimed steps of the ~100M config.")
    p.add_argument("--m100-steps", type=int, default=3, help="Timed steps of the ~100M config (0: skip it).")
    p.add_argument("--m100-micro-batch", type=int, default=2, help="Packed sequences per micro batch (~100M).")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads of the trainer (default: torch's choice)."
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="Accelerator peak for MFU (else the GPU table).")
    p.add_argument("--work", type=Path, default=Path("bench/_work/train"), help="Manifests, shards, plans, result.")
    return p.parse_args(argv)


# ---- FLOPs and MFU (pure)


def flops_per_token(params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter (2 forward, 4 backward) + attention scores 12·L·h·s (PaLM, App. B).

    Recomputation under gradient checkpointing is not counted: this is model FLOPs (MFU), not hardware FLOPs.
    """
    return 6.0 * params + 12.0 * layers * hidden * seq_len


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its `torch.cuda.get_device_name()`; None when the table does not know it."""
    words = re.findall(r"[a-z0-9]+", device_name.lower())
    for key, peak in PEAK_BF16_TFLOPS:
        k = key.lower().split()
        if any(words[i : i + len(k)] == k for i in range(len(words) - len(k) + 1)):
            return peak
    return None


def mfu_text(model_flops_per_s: float, peak: float | None, device: str | None) -> str:
    """`MFU: 41.2% of 312 TFLOP/s`, or why there is no figure."""
    if peak is None:
        return "MFU: n/a (no GPU)" if device is None else f"MFU: n/a (unknown GPU {device!r}: pass --peak-tflops)"
    return f"MFU: {100 * model_flops_per_s / (peak * 1e12):.1f}% of {peak:g} TFLOP/s"


# ---- the machine


def cpuinfo(field: str) -> str:
    """The first `field` line of /proc/cpuinfo ("" where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((x.split(":", 1)[1].strip() for x in lines if x.split(":", 1)[0].strip() == field), "")


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    info: dict[str, Any] = {
        "cpu": cpuinfo("model name") or platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    else:
        info["cpu_bf16_instructions"] = sorted(set(cpuinfo("flags").split()) & {"avx512_bf16", "amx_bf16"})
    return info


def bf16_slowdown(path: Path, batch: PackedBatch, repeat: int = 2) -> float:
    """Forward + backward of the config's model in bf16 over the same in fp32 (best of `repeat` each), on the CPU.

    On one thread: with several, a busy machine stalls every OpenMP barrier and the stalls swamp both dtypes alike.
    """
    m = load_manifest(path)
    tokenizer = load_tokenizer(m.model.tokenizer_path())
    threads, best = torch.get_num_threads(), []
    torch.set_num_threads(1)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            model = build_vlm(m.model, tokenizer, image_size=m.stages[0].image_size, dtype=dtype)
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                model(batch).loss.backward()
                times.append(time.perf_counter() - t)
            best.append(min(times))
    finally:
        torch.set_num_threads(threads)
    return best[1] / best[0]


# ---- manifests and build


def write_manifests(work: Path, out: Path, args: argparse.Namespace) -> dict[str, Path]:
    """tiny.yaml and m100.yaml in `work`: the demo manifest with one stage each, absolute paths, no ablations."""
    demo = yaml.safe_load(DEMO.read_text())
    base = DEMO.parent
    stage = next(s for s in demo["stages"] if s["name"] == DEMO_STAGE)
    common = {
        "output": str(out),
        "data_root": str((base / demo["data_root"]).resolve()),
        "sources": {name: demo["sources"][name] for name in stage["mixture"]},
        "model": {**demo["model"], "tokenizer": str((base / demo["model"]["tokenizer"]).resolve())},
        # bf16 where there are tensor cores for it; fp32 on a CPU (see the demo manifest's note)
        "deepspeed": {**demo["deepspeed"], "bf16": torch.cuda.is_available()},
    }
    steps = args.warmup + args.steps
    # the learning rate does not change the step time; only a warm-up longer than the stage would be invalid
    optimizer = stage["optimizer"] | {"warmup_steps": min(stage["optimizer"].get("warmup_steps", 0), steps - 1)}
    tiny = stage | {"name": f"demo-{DEMO_STAGE}", "size": {"steps": steps}, "optimizer": optimizer}
    m100 = {k: v for k, v in stage.items() if k != "lora"} | M100_STAGE
    m100 |= {"micro_batch": args.m100_micro_batch, "size": {"steps": args.m100_warmup + max(args.m100_steps, 1)}}
    configs = {"tiny": (tiny, {}), "m100": (m100, M100_MODEL)}
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (st, model) in configs.items():
        data = {k: v for k, v in demo.items() if k != "ablations"} | common
        data |= {"name": f"bench-train-{name}", "stages": [st], "model": deep_merge(common["model"], model)}
        paths[name] = work / f"{name}.yaml"
        note = f"# Written by `python -m bench.train.run` from {DEMO}; edits are overwritten.\n"
        paths[name].write_text(note + yaml.safe_dump(data, sort_keys=False))
    return paths


def build_sources(m: Manifest, out: str) -> None:
    """Shards of the manifest's sources, one process (a source whose index exists is kept)."""
    for spec in source_specs(m):
        src = source_dir(out, spec.name)
        if Path(src, "index.parquet").exists():
            continue
        for shard, items in chunk_rows(get_reader(spec.kind)(spec), m.shards.samples_per_shard):
            process_shard(items, m.shards, src, shard)
        merge_index(src)


def plan_stage(m: Manifest, out: str) -> None:
    """Length index (cached per tokenisation) and plan of the manifest's one stage."""
    stage = m.stages[0]
    n_img, tok = m.model.image_tokens_for(stage.image_size), m.model.tokenizer_path()
    key = cache_key(tok, stage.template, n_img)
    lengths = {}
    for name in stage.mixture:
        ldir = str(Path(out) / "lengths" / key / name)
        lengths[name] = write_source_lengths(source_dir(out, name), ldir, tok, stage.template, n_img)
    plan_one(m, 0, out, lengths)


# ---- timed steps


@dataclass
class Timed:
    """The timed steps of one run, and what they cost.

    `cpu_s` is this process's CPU time (all its threads), `tokens` real (non-padding) tokens, `wait_s` time spent
    waiting for batches, `load` the 1-minute load average at the start; `worker_cpu_s` the loader workers' CPU time
    over the whole run (warm-up included: they build each micro batch of the plan exactly once).
    """

    name: str
    steps: int
    seconds: float
    cpu_s: float
    tokens: int
    wait_s: float
    load: float
    step_s: list[float]
    worker_cpu_s: float = 0.0

    @property
    def step_ms(self) -> float:
        return 1e3 * self.seconds / self.steps

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Trainer:
    """One config ready to step: its stage, DeepSpeed engine, tokenizer and the sizes the FLOP count needs."""

    stage: StageConfig
    engine: Any
    tokenizer: Any
    params: int
    trainable: int
    layers: int
    hidden: int


def make_trainer(path: Path, total_steps: int) -> Trainer:
    """Manifest → model (seeded) → freeze for the stage → DeepSpeed engine, as `train launch` does per stage."""
    m = load_manifest(path)
    stage = m.stages[0]
    tokenizer = load_tokenizer(m.model.tokenizer_path())
    torch.manual_seed(m.seed)
    model = build_vlm(m.model, tokenizer, image_size=stage.image_size)
    llm = model.llm.config
    report = freeze_stage(model, stage, 0)
    run = StageRun(
        stage=stage,
        ds=m.deepspeed,
        steps=total_steps,
        global_batch=stage.global_batch or stage.micro_batch,
        micro_batch=stage.micro_batch,
        run_dir=path.parent / "run",  # nothing is saved: only the engine is built
        metrics_path=path.parent / "run" / "metrics.jsonl",
    )
    engine = build_engine(model, run)
    engine.train()
    return Trainer(stage, engine, tokenizer, report.total, report.trainable, llm.num_hidden_layers, llm.hidden_size)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_steps(tr: Trainer, batches: Iterator[PackedBatch], name: str, warmup: int, steps: int) -> Timed:
    """`warmup` untimed steps, then `steps` timed ones, each `train_step` as `run_stage` calls it."""
    for i in range(warmup):
        train_step(tr.engine, batches, tr.stage, i, NOT_A_CHECKPOINT)
    _sync()
    load, t, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    done = [train_step(tr.engine, batches, tr.stage, warmup + i, NOT_A_CHECKPOINT) for i in range(steps)]
    _sync()
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    tokens, wait = sum(m.tokens for m in done), sum(m.loader_wait_s for m in done)
    return Timed(name, steps, seconds, cpu, tokens, wait, load, [m.step_time_s for m in done])


def overheads(loader: list[Timed], memory: list[Timed]) -> dict[str, Any]:
    """Loader-fed over memory-fed step time - 1: per round, their median, over all timed steps; and the noise floor.

    Round `i`'s two runs are adjacent in time, so a change in the machine's load between rounds cancels out of
    `per_round` and `median_round` (the figure to read on a busy machine); `total` keeps it. `noise` is the spread of
    the memory-fed runs' mean step times (max / min - 1): identical work, fed identically.
    """
    per_round = [a.seconds / a.steps / (b.seconds / b.steps) - 1 for a, b in zip(loader, memory, strict=True)]
    means = [t.seconds / t.steps for t in memory]
    return {
        "median_round": statistics.median(per_round),
        "total": sum(t.seconds for t in loader) / sum(t.seconds for t in memory) - 1,
        "per_round": per_round,
        "noise": max(means) / min(means) - 1,
    }


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # joined children only: read after the workers are joined
    return r.ru_utime + r.ru_stime


def loader_run(tr: Trainer, out: str, workers: int, warmup: int, steps: int) -> Timed:
    """The timed steps fed by a fresh `StageLoader` from the stage's first micro batch."""
    children = _children_cpu()
    batches = iter(StageLoader(out, tr.stage.name, num_workers=workers, tokenizer=tr.tokenizer))
    try:
        timed = timed_steps(tr, batches, "loader", warmup, steps)
    finally:
        batches.close()  # joins the DataLoader's workers before the next run starts
    timed.worker_cpu_s = _children_cpu() - children
    return timed


def collect(tr: Trainer, out: str, workers: int, micro_batches: int) -> list[PackedBatch]:
    """The stage's first `micro_batches` micro batches, exactly as the loader delivers them, held in memory."""
    batches = iter(StageLoader(out, tr.stage.name, num_workers=workers, tokenizer=tr.tokenizer))
    try:
        return [next(batches) for _ in range(micro_batches)]
    finally:
        batches.close()


def throughput(tr: Trainer, runs: list[Timed], peak: float | None) -> dict[str, Any]:
    """tokens/s over `runs`, model FLOP/s from it, and MFU (or why not)."""
    seconds, tokens = sum(r.seconds for r in runs), sum(r.tokens for r in runs)
    per_token = flops_per_token(tr.params, tr.layers, tr.hidden, tr.stage.seq_len)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "params": tr.params,
        "trainable": tr.trainable,
        "seq_len": tr.stage.seq_len,
        "micro_batch": tr.stage.micro_batch,
        "tokens_per_s": tokens / seconds,
        "step_ms": 1e3 * seconds / sum(r.steps for r in runs),
        "model_gflop_per_token": per_token / 1e9,
        "model_tflop_per_s": per_token * tokens / seconds / 1e12,
        "mfu": mfu_text(per_token * tokens / seconds, peak, device),
    }


# ---- the story


def say(msg: str) -> None:
    print(msg, flush=True)


def bench_tiny(path: Path, out: str, args: argparse.Namespace, peak: float | None) -> dict[str, Any]:
    per_run = args.warmup + args.steps
    tr = make_trainer(path, total_steps=2 * args.rounds * per_run)
    say(
        f"tiny: {tr.params:,} parameters ({tr.trainable:,} trainable), seq_len {tr.stage.seq_len}, "
        f"micro batch {tr.stage.micro_batch}"
    )
    held = collect(tr, out, args.workers, per_run * tr.engine.gradient_accumulation_steps())
    runs: dict[str, list[Timed]] = {"loader": [], "memory": []}
    for r in range(args.rounds):
        for name in ("loader", "memory") if r % 2 == 0 else ("memory", "loader"):
            if name == "loader":
                timed = loader_run(tr, out, args.workers, args.warmup, args.steps)
            else:
                timed = timed_steps(tr, iter(held), "memory", args.warmup, args.steps)
            runs[name].append(timed)
            say(
                f"  round {r + 1} {name:6}: {timed.step_ms:6.0f} ms/step, {1e3 * timed.cpu_s / timed.steps:6.0f} "
                f"CPU ms/step, {timed.tokens_per_s:5.0f} tokens/s, waited {timed.wait_s:.2f} s, load {timed.load:.1f}"
            )
    loader, memory = runs["loader"], runs["memory"]
    result = throughput(tr, loader, peak)
    result |= {
        "loader_overhead": overheads(loader, memory),
        "loader_wait_share": sum(t.wait_s for t in loader) / sum(t.seconds for t in loader),
        "memory_step_ms": 1e3 * sum(t.seconds for t in memory) / sum(t.steps for t in memory),
        "main_cpu_ms_per_step": {k: 1e3 * sum(t.cpu_s for t in v) / sum(t.steps for t in v) for k, v in runs.items()},
        "worker_cpu_ms_per_step": 1e3 * sum(t.worker_cpu_s for t in loader) / (args.rounds * per_run),
        "runs": [asdict(t) for v in runs.values() for t in v],
    }
    if not torch.cuda.is_available():
        result["bf16_slowdown"] = bf16_slowdown(path, normalize_pixels(held[0]))
    del tr, held
    gc.collect()
    return result


def bench_m100(path: Path, out: str, args: argparse.Namespace, peak: float | None) -> dict[str, Any]:
    tr = make_trainer(path, total_steps=args.m100_warmup + args.m100_steps)
    say(
        f"m100: {tr.params:,} parameters ({tr.trainable:,} trainable), seq_len {tr.stage.seq_len}, "
        f"micro batch {tr.stage.micro_batch}"
    )
    timed = loader_run(tr, out, args.workers, args.m100_warmup, args.m100_steps)
    say(f"  {timed.step_ms / 1e3:.1f} s/step, {timed.tokens_per_s:.0f} tokens/s, load {timed.load:.1f}")
    result = throughput(tr, [timed], peak) | {"runs": [asdict(timed)]}
    del tr
    gc.collect()
    return result


def report(res: dict[str, Any]) -> str:
    mach, tiny = res["machine"], res["tiny"]
    lines = [f"command: {res['command']}", f"machine: {json.dumps(mach)}"]
    if "bf16_slowdown" in tiny:
        lines.append(
            f"precision: fp32 (CPU bf16 instructions: {', '.join(mach['cpu_bf16_instructions']) or 'none'}; forward "
            f"+ backward of the tiny model in bf16 takes {tiny['bf16_slowdown']:.1f}x its fp32 time here)"
        )
    cpu, over = tiny["main_cpu_ms_per_step"], tiny["loader_overhead"]
    lines += [
        f"loader overhead (tiny, target <= 5%): {100 * over['median_round']:+.1f}% step time, median of rounds "
        f"({', '.join(f'{100 * x:+.1f}%' for x in over['per_round'])}); {100 * over['total']:+.1f}% over all timed "
        f"steps ({tiny['step_ms']:.0f} vs {tiny['memory_step_ms']:.0f} ms/step fed from memory); noise floor: the "
        f"memory-fed runs' mean step times differ by {100 * over['noise']:.0f}%",
        f"loader cost (tiny): the trainer waited on it {100 * tiny['loader_wait_share']:.1f}% of the loader runs' "
        f"time; its workers used {tiny['worker_cpu_ms_per_step']:.0f} CPU ms/step (trainer process: "
        f"{cpu['loader']:.0f} CPU ms/step loader-fed, {cpu['memory']:.0f} memory-fed)",
    ]
    for name in ("tiny", "m100"):
        if name in res:
            r = res[name]
            lines.append(
                f"{name}: {r['params'] / 1e6:.1f}M params, {r['tokens_per_s']:.0f} tokens/s, "
                f"{r['step_ms']:.0f} ms/step, {r['model_gflop_per_token']:.3f} GFLOP/token → "
                f"{1e3 * r['model_tflop_per_s']:.1f} GFLOP/s model FLOPs; {r['mfu']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = args.work.resolve()
    # DeepSpeed JIT-builds its CPU shared-memory op at init; in the shared ~/.cache/torch_extensions processes with
    # two different build commands rebuild it for each other (~2.5 min each on this machine). Ours is private.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(work / "torch_extensions"))
    if args.threads:
        torch.set_num_threads(args.threads)
    out = str(work / "out")
    started = time.perf_counter()
    res: dict[str, Any] = {"command": shlex.join(["python", "-m", "bench.train.run", *(argv or sys.argv[1:])])}
    res["machine"] = machine()
    paths = write_manifests(work, Path(out), args)
    manifests = {name: load_manifest(p) for name, p in paths.items()}
    build_sources(manifests["tiny"], out)
    for m in manifests.values():
        plan_stage(m, out)
    say(f"build and plans ready in {time.perf_counter() - started:.0f} s: {out}")
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None)
    res["tiny"] = bench_tiny(paths["tiny"], out, args, peak)
    if args.m100_steps:
        res["m100"] = bench_m100(paths["m100"], out, args, peak)
    res["machine"]["load_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_s"] = time.perf_counter() - started
    (work / f"result-threads{torch.get_num_threads()}.json").write_text(json.dumps(res, indent=2) + "\n")
    say(report(res))
    return res


if __name__ == "__main__":
    main()
