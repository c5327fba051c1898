"""`python -m bench.eval.packing`: `train eval`'s padded batches against packed ones, per batch size, in one run.

Story: the model and GQA-layout questions of `bench.eval.run` (the demo's VLM built from configs, a tokenizer trained
here, random weights; `--llm-hidden` / `--llm-layers` for a larger LLM; `--words` for the spread of question lengths)
→ the prompts as `train eval` renders them, batched in its order (sorted by length; `--order arrival` for the order
of the file) → per round and batch size, four engines (two pairs) back to back on each batch, in rotating order:

- `padded`: `train.evals.engine.generate`, what `train eval` runs (left padding, one mask, KV cache), under the
  attention the export loads with on CPU (eager);
- `packed/mask`: `bench.eval.packed`, the prompts in one row with a block-diagonal 4D mask, same attention;
- `padded/varlen-attn` and `packed/varlen`: the same two under `bench.eval.packed.VARLEN`, flash-attention 2's contract
  on CPU — the padded batch's 2D mask, or the packed row's `cu_seq_lens` (each question's attention alone);

the packed engines decode from a left-padded cache laid from the packed one → prefill and decode seconds, questions/s
(medians of rounds), padding waste of the padded prefill, whether every answer equals the padded engine's, and the
load average beside the figures. Images are decoded once beforehand (the same work for every engine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.eval.packed import VARLEN, attention, decode, padding_waste, prefill_packed
from bench.eval.run import add_export_args, make_export, make_gqa
from mixer.evals import get_benchmark, read_items
from shards.progress import progress
from train.evals import load_for_eval
from train.evals.engine import generate
from train.evals.model import EvalModel

ENGINES = ("padded", "packed/mask", "padded/varlen-attn", "packed/varlen")
ATTENTION = {"padded/varlen-attn": VARLEN, "packed/varlen": VARLEN}
"""The attention an engine runs under; the others keep the model's own."""


class Phases:
    """Seconds spent reading prompts (prefill) and generating (decode) by one engine over all batches."""

    def __init__(self) -> None:
        self.prefill = self.decode = 0.0


def run_padded(model: EvalModel, batch: tuple, n_new: int, phases: Phases) -> list[list[int]]:
    """`generate` as `train eval` calls it; its prefill is the forward call that carries the images."""
    forward = model.forward

    def timed(input_ids, pixel_values, *args, **kwargs):
        start = time.perf_counter()
        out = forward(input_ids, pixel_values, *args, **kwargs)
        if pixel_values is not None:
            phases.prefill += time.perf_counter() - start
        return out

    model.forward = timed  # an instance attribute: shadows the method for this call only
    before, start = phases.prefill, time.perf_counter()
    try:
        answers = generate(model, *batch, n_new)
    finally:
        del model.forward
    phases.decode += time.perf_counter() - start - (phases.prefill - before)
    return answers


def run_packed(model: EvalModel, batch: tuple, n_new: int, phases: Phases) -> list[list[int]]:
    start = time.perf_counter()
    state = prefill_packed(model, *batch)
    middle = time.perf_counter()
    answers = decode(model, state, n_new)
    phases.prefill += middle - start
    phases.decode += time.perf_counter() - middle
    return answers


RUNS: dict[str, Callable] = {name: run_padded if name.startswith("padded") else run_packed for name in ENGINES}


def run(model: EvalModel, name: str, batch: tuple, n_new: int, phases: Phases) -> list[list[int]]:
    """One engine on one batch, under its attention (the switch itself untimed)."""
    with attention(model, ATTENTION.get(name)):
        return RUNS[name](model, batch, n_new, phases)


def batches(model: EvalModel, data: Path, size: int, order: str) -> list[tuple[list[list[int]], torch.Tensor]]:
    """(prompts, pixels) per batch, in `train eval`'s order (sorted by prompt length) or the file's."""
    items = read_items(get_benchmark("gqa"), data)
    prompts = [model.prompt_ids(i.text) for i in items]
    pixels = [model.pixels(i.image) for i in items]
    idx = sorted(range(len(items)), key=lambda k: len(prompts[k])) if order == "sorted" else list(range(len(items)))
    return [
        ([prompts[k] for k in chunk], torch.stack([pixels[k] for k in chunk]))
        for chunk in (idx[s : s + size] for s in range(0, len(idx), size))
    ]


def measure(model: EvalModel, data: Path, args: argparse.Namespace) -> dict:
    sizes = [int(b) for b in args.batches.split(",")]
    work = {b: batches(model, data, b, args.order) for b in sizes}
    seconds = {b: {e: {"prefill": [], "decode": []} for e in ENGINES} for b in sizes}
    agree = {b: {e: 0 for e in ENGINES[1:]} for b in sizes}
    for name in ENGINES:  # warm-up, untimed: first calls pay allocations the rounds should not see
        run(model, name, work[sizes[0]][0], args.max_new_tokens, Phases())
    load = [os.getloadavg()[0]]
    bar = progress(total=args.rounds * sum(len(w) for w in work.values()), desc="rounds × batches", unit="batch")
    for r in range(args.rounds):
        for b in sizes:
            phases = {name: Phases() for name in ENGINES}
            answers: dict[str, list] = {name: [] for name in ENGINES}
            for i, batch in enumerate(work[b]):
                k = (r + i) % len(ENGINES)
                # the engines back to back on the same batch, each leading in turn: a load spike from other work
                # on the shared cores falls on all of them rather than on one engine's whole pass
                for name in ENGINES[k:] + ENGINES[:k]:
                    answers[name] += run(model, name, batch, args.max_new_tokens, phases[name])
                bar.update()
            for name in ENGINES:
                seconds[b][name]["prefill"].append(phases[name].prefill)
                seconds[b][name]["decode"].append(phases[name].decode)
            if r == 0:
                for name in ENGINES[1:]:
                    agree[b][name] = sum(x == y for x, y in zip(answers[name], answers["padded"], strict=True))
        load.append(os.getloadavg()[0])
    bar.close()
    n = sum(len(p) for p, _ in work[sizes[0]])
    table = {}
    for b in sizes:
        pads, total = map(sum, zip(*(padding_waste(p) for p, _ in work[b]), strict=True))
        table[b] = {"padding_waste": pads / total}
        for name in ENGINES:
            pre, dec = (statistics.median(seconds[b][name][k]) for k in ("prefill", "decode"))
            totals = [p + d for p, d in zip(seconds[b][name]["prefill"], seconds[b][name]["decode"], strict=True)]
            table[b][name] = {
                "prefill_s": pre,
                "decode_s": dec,
                "questions_per_s": n / statistics.median(totals),
                "same_answers": f"{agree[b].get(name, n)}/{n}",
            }
    return {"questions": n, "seconds": seconds, "table": table, "load_average_1min": load}


def markdown(result: dict) -> str:
    lines = ["| batch | pad waste | engine | prefill s | decode s | questions/s | same answers |", "|---" * 7 + "|"]
    for b, row in result["table"].items():
        for name in ENGINES:
            e = row[name]
            lines.append(
                f"| {b} | {row['padding_waste']:.1%} | {name} | {e['prefill_s']:.2f} | {e['decode_s']:.2f} "
                f"| {e['questions_per_s']:.2f} | {e['same_answers']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=96)
    p.add_argument("--batches", default="8,16,32", help="batch sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    add_export_args(p)
    p.add_argument("--words", default="3,14", help="min,max words per question (the spread of prompt lengths)")
    p.add_argument("--order", default="sorted", choices=["sorted", "arrival"], help="sorted: train eval's batches")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on shared cores)")
    p.add_argument("--work", type=Path, default=Path("bench/_work/eval_packing"))
    args = p.parse_args(argv)
    # Every engine does the same matmuls; on cores shared with other work, a thread pool's barriers stall on the
    # busiest core (measured here: the same prefill 10-40x slower from one round to the next with 2 threads).
    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    export = make_export(work, args.llm_hidden, args.llm_layers, args.image_size, args.template, "tinymix")
    lo, hi = (int(w) for w in args.words.split(","))
    make_gqa(work / "data", args.questions, (lo, hi))
    model = load_for_eval(export)
    lengths = sorted(len(model.prompt_ids(i.text)) for i in read_items(get_benchmark("gqa"), work / "data"))
    result = {
        "model": {"llm_hidden": args.llm_hidden, "llm_layers": args.llm_layers, "image_size": args.image_size,
                  "attention": model.vlm.llm.config._attn_implementation, "image_tokens": model.n_image_tokens},
        "prompt_tokens": {"min": lengths[0], "median": statistics.median(lengths), "max": lengths[-1]},
        "order": args.order,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
        **measure(model, work / "data", args),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
