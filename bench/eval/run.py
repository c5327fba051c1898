"""`python -m bench.eval.run`: bench/eval — `train eval` (batched) against LLaVA's one-question-at-a-time loop.

Story: train a tokenizer and build a VLM from configs (the demo's model, or a larger LLM with `--llm-hidden` /
`--llm-layers`), export it as `train launch` does → write a GQA-layout benchmark of `--questions` questions with
random images → `train eval --questions-only` writes the question file → `--rounds` rounds, in alternating order, of
the two whole commands as a user runs them, each its own process: `train eval EXPORT --benchmarks gqa --batch B`
and the peer `bench.eval.model_vqa` (LLaVA's loop, batch 1) → questions/s per command (median over rounds), the
ratio, and whether the two answers files agree (greedy decoding: they should, answer for answer) → the same two
engines in this process on one loaded model (`train.evals.answer_items` vs the loop), rounds alternating: the
answering alone, without process start-up and model loading.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from bench.eval.model_vqa import answer_loop
from mixer.evals import get_benchmark, read_items
from mixer.manifest.model import ModelConfig
from mixer.templates import template_texts
from mixer.tokenizer import load_tokenizer, train_tokenizer
from train.evals import EvalConfig, answer_items, load_for_eval
from train.model import build_vlm, save_export
from train.model.export import EXPORT_JSON
from train.model.hf_export import write_export

WORDS = "what colour is the cat dog car sign red blue green left right on in of a there many how book title".split()


def make_export(work: Path, hidden: int, layers: int, image_size: int, template: str, form: str) -> Path:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(400)] + template_texts() * 20
    tok_dir = work / "tokenizer"
    train_tokenizer(texts, tok_dir, vocab_size=1000)
    tok = load_tokenizer(str(tok_dir))
    cfg = ModelConfig.model_validate(
        {
            "vision": {
                "config": {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128,
                           "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": image_size,
                           "patch_size": 16},
            },
            "connector": {"type": "mlp2x_gelu"},
            "llm": {"config": {"model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                               "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 4,
                               "max_position_embeddings": 1024}},
            "tokenizer": str(tok_dir),
        }
    )  # fmt: skip
    torch.manual_seed(0)
    vlm = build_vlm(cfg, tok, image_size)
    if form == "hf":
        write_export(
            vlm, tok, work / "export", image_size=image_size, template=template, mean_std=([0.5] * 3, [0.5] * 3)
        )
        return work / "export"
    out = save_export(vlm, tok, work / "export", image_size=image_size)
    meta = json.loads((out / EXPORT_JSON).read_text())
    meta.update(template=template, mean_std=[[0.5] * 3, [0.5] * 3])
    (out / EXPORT_JSON).write_text(json.dumps(meta, indent=2))
    return out


def make_gqa(root: Path, n: int, words: tuple[int, int] = (3, 14)) -> None:
    """A GQA-layout benchmark of `n` questions of `words` (min, max) words on random-colour images of random sizes."""
    rng = random.Random(1)
    images = root / "gqa" / "images"
    images.mkdir(parents=True, exist_ok=True)
    questions = {}
    for k in range(n):
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (rng.randint(60, 120), rng.randint(60, 120)), colour).save(images / f"n{k}.jpg")
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
        questions[str(k)] = {"imageId": f"n{k}", "question": f"{text}?", "answer": rng.choice(WORDS)}
    (root / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(questions))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def in_process(export: Path, data: Path, questions_file: Path, args: argparse.Namespace) -> dict:
    """Answering alone, one loaded model: `answer_items` (batched) vs the model_vqa loop, alternating per round."""
    model = load_for_eval(export)
    items = read_items(get_benchmark("gqa"), data)
    questions = [json.loads(x) for x in questions_file.read_text().splitlines()]
    cfg = EvalConfig(data, batch=args.batch, max_new_tokens=args.max_new_tokens)
    runs = {
        "answer_items (batched)": lambda: answer_items(model, items, cfg),
        "model_vqa loop (batch 1)": lambda: answer_loop(model, questions, data / "gqa", args.max_new_tokens),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    qps = {k: len(items) / statistics.median(v) for k, v in times.items()}
    return {
        "seconds": times,
        "questions_per_s": qps,
        "ratio": qps["answer_items (batched)"] / qps["model_vqa loop (batch 1)"],
    }


def add_export_args(p: argparse.ArgumentParser) -> None:
    """The benchmarked export's shape and generation length (`make_export`), the same in every bench/eval script."""
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--llm-hidden", type=int, default=128, help="128 and 2 layers: the demo's LLM")
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--template", default="llava_v1")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    add_export_args(p)
    p.add_argument("--format", default="tinymix", choices=["tinymix", "hf"], help="export form (hf: 🤗 Llava)")
    p.add_argument("--work", type=Path, default=Path("bench/_work/eval"))
    args = p.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    export = make_export(work, args.llm_hidden, args.llm_layers, args.image_size, args.template, args.format)
    data = work / "data"
    make_gqa(data, args.questions)
    py = [sys.executable, "-m"]
    common = ["--benchmarks", "gqa", "--data-root", str(data)]
    questions = work / "questions.jsonl"
    subprocess.run([*py, "train.cli", "eval", *common, "--questions-only", str(questions)], check=True)
    ours = [*py, "train.cli", "eval", str(export), *common, "--batch", str(args.batch), "--out", str(work / "ours")]
    ours += ["--max-new-tokens", str(args.max_new_tokens)]
    peer = [*py, "bench.eval.model_vqa", "--model", str(export), "--question-file", str(questions)]
    peer += ["--image-folder", str(data / "gqa"), "--answers-file", str(work / "peer.jsonl")]
    peer += ["--max-new-tokens", str(args.max_new_tokens)]
    times: dict[str, list[float]] = {"train eval (batched)": [], "model_vqa loop (batch 1)": []}
    for r in range(args.rounds):
        pair = [("train eval (batched)", ours), ("model_vqa loop (batch 1)", peer)]
        for name, cmd in pair if r % 2 == 0 else pair[::-1]:
            times[name].append(timed(cmd))
    ours_answers = [json.loads(x) for x in (work / "ours" / "gqa" / "answers.jsonl").read_text().splitlines()]
    peer_answers = [json.loads(x) for x in (work / "peer.jsonl").read_text().splitlines()]
    same = sum(a["text"] == b["text"] for a, b in zip(ours_answers, peer_answers, strict=True))
    result = {
        "questions": args.questions,
        "batch": args.batch,
        "model": {"llm_hidden": args.llm_hidden, "llm_layers": args.llm_layers, "image_size": args.image_size},
        "max_new_tokens": args.max_new_tokens,
        "export_form": args.format,
        "seconds": times,
        "questions_per_s": {k: args.questions / statistics.median(v) for k, v in times.items()},
        "answers_identical": f"{same}/{len(ours_answers)}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    qps = result["questions_per_s"]
    result["ratio"] = qps["train eval (batched)"] / qps["model_vqa loop (batch 1)"]
    result["in_process"] = in_process(export, data, questions, args)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
