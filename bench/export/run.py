"""`python -m bench.export.run`: bench/export — peak memory and tokens/s of an export in fp32, bf16 and int8.

Story: two hf exports — the demo's trained export (`make demo`, `runs/demo/run/export`) and a ~100M-parameter
random model built from the demo tokenizer into `--work` — and the demo's held-out questions with their images.
Each mode (`none`: the libraries only; `fp32`; `bf16`; `int8`: weight-only int8 on fp32 activations) runs in its own
process (`bench.export.worker`), loading the export and answering as `train generate` does (🤗 processor and chat
template, greedy `generate`). `--rounds` rounds run the modes in a rotated order; figures are medians over rounds:
peak RSS, the model's share of it (peak minus the `none` process), tokens/s of generation, and how many answers
equal the fp32 answers token for token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
MODES = ["none", "fp32", "bf16", "int8"]
M100_MODEL: dict[str, Any] = {
    "vision": {
        "config": {
            "model_type": "clip_vision_model",
            "hidden_size": 384,
            "intermediate_size": 1536,
            "num_hidden_layers": 6,
            "num_attention_heads": 6,
            "image_size": 224,
            "patch_size": 16,
        }
    },
    "connector": {"type": "mlp2x_gelu"},
    "llm": {
        "config": {
            "model_type": "llama",
            "hidden_size": 768,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "num_key_value_heads": 12,
            "max_position_embeddings": 1024,
        }
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.export.run", description=__doc__.splitlines()[0])
    p.add_argument("--export", type=Path, default=ROOT / "runs/demo/run/export", help="The demo's hf export.")
    p.add_argument("--data", type=Path, default=ROOT / "demo-data", help="Demo corpus (eval questions, tokenizer).")
    p.add_argument("--prompts", type=int, default=8, help="Held-out questions answered per process.")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="Torch threads per process.")
    p.add_argument("--only", choices=["demo", "m100"], default=None, help="Measure one of the two exports.")
    p.add_argument("--work", type=Path, default=ROOT / "bench/_work/export", help="The ~100M export and results.")
    return p.parse_args(argv)


def m100_export(work: Path, tokenizer_dir: Path) -> Path:
    """A ~100M-parameter random llama + CLIP model at 224 px, exported (native form) once into WORK/m100."""
    out = work / "m100"
    if (out / "tinymix_export.json").is_file():
        return out
    from mixer.loader.images import mean_std
    from mixer.manifest.model import ModelConfig
    from mixer.tokenizer import load_tokenizer
    from train.model import build_vlm
    from train.model.hf_export import write_export

    tok = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    vlm = build_vlm(ModelConfig.model_validate({**M100_MODEL, "tokenizer": str(tokenizer_dir)}), tok, 224).eval()
    write_export(vlm, tok, out, image_size=224, template="minigptv2", mean_std=mean_std("clip_vision_model"))
    return out


def prompts(data: Path, n: int, work: Path) -> Path:
    """The first `n` held-out questions (image path, question, task) as the workers' JSON input."""
    from mixer.evalset import load_items

    items = load_items(data / "eval" / "eval.json")[:n]
    path = work / "prompts.json"
    path.write_text(json.dumps([{"image": i.image, "question": i.question, "task": i.task} for i in items]))
    return path


def measure(export: Path, mode: str, prompt_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bench.export.worker", str(export), mode, str(prompt_file), str(args.max_new_tokens)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{mode} on {export}: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(answers: list[list[int]], reference: list[list[int]]) -> dict[str, float]:
    """Share of answers identical to the reference, and mean share of reference tokens matched before a divergence."""
    same = sum(a == r for a, r in zip(answers, reference, strict=True))
    prefix = []
    for a, r in zip(answers, reference, strict=True):
        k = next((i for i, (x, y) in enumerate(zip(a, r, strict=False)) if x != y), min(len(a), len(r)))
        prefix.append(k / max(1, len(r)))
    return {"identical": same / len(reference), "prefix": statistics.mean(prefix)}


def bench_export(export: Path, prompt_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        for mode in order:
            runs[mode].append(measure(export, mode, prompt_file, args))
            print(f"  round {r + 1}/{args.rounds} {mode}: peak {runs[mode][-1]['peak_rss_mb']:.0f} MB", flush=True)
    base = statistics.median(x["peak_rss_mb"] for x in runs["none"])
    out: dict[str, Any] = {"baseline_peak_rss_mb": base, "modes": {}}
    reference = runs["fp32"][0]["answers"]
    for mode in MODES[1:]:
        xs = runs[mode]
        peak = statistics.median(x["peak_rss_mb"] for x in xs)
        out["modes"][mode] = {
            "peak_rss_mb": peak,
            "model_rss_mb": peak - base,
            "weight_mb": xs[0]["weight_mb"],
            "tokens_per_s": statistics.median(x["new_tokens"] / x["gen_s"] for x in xs),
            "load_s": statistics.median(x["load_s"] for x in xs),
            "new_tokens": xs[0]["new_tokens"],
            "agreement_with_fp32": agreement(xs[0]["answers"], reference),
            "deterministic_over_rounds": all(x["answers"] == xs[0]["answers"] for x in xs),
        }
    return out


def table(name: str, res: dict[str, Any]) -> str:
    lines = [
        f"**{name}** (baseline process without a model: {res['baseline_peak_rss_mb']:.0f} MB peak RSS)",
        "",
        "| mode | weights MB | peak RSS MB | model's share MB | tokens/s | answers = fp32 | tokens = fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, x in res["modes"].items():
        agree = x["agreement_with_fp32"]
        lines.append(
            f"| {mode} | {x['weight_mb']:.1f} | {x['peak_rss_mb']:.0f} | {x['model_rss_mb']:.0f} | "
            f"{x['tokens_per_s']:.1f} | {100 * agree['identical']:.0f}% | {100 * agree['prefix']:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not (args.export / "tinymix_export.json").is_file():
        sys.exit(f"bench/export: {args.export} is not an hf export; run `make demo` first (or pass --export)")
    args.work.mkdir(parents=True, exist_ok=True)
    prompt_file = prompts(args.data, args.prompts, args.work)
    res: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    for name in ("demo", "m100"):
        if args.only not in (None, name):
            continue
        export = args.export if name == "demo" else m100_export(args.work, args.data / "tokenizer")
        print(f"{name}: {export}", flush=True)
        res[name] = bench_export(export, prompt_file, args)
        print(table(name, res[name]), flush=True)
    (args.work / f"result-{args.only or 'all'}.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
