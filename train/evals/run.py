"""`train eval`: ask a model a benchmark's questions in batches, write LLaVA-form answers, scores and an eval card.

Per benchmark, OUT/<name>/answers.jsonl holds one `{"question_id", "prompt", "text"}` line per question (likelihood
scoring adds the answer's `score`), OUT/<name>/scores.json the scorer's numbers; OUT/scores.json gathers them and
OUT/card.json records everything that decides a number: template and a rendered prompt, image size and crop, the
benchmark options (OCR tokens, POPE files, splits), the tinymix version and the sha256 of every file read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mixer.evals import (
    Benchmark,
    BenchmarkError,
    EvalOptions,
    Item,
    benchmark_root,
    question_rows,
    read_items,
    sha256_file,
    write_jsonl,
)
from shards.progress import progress
from train.evals.engine import answer_logprobs, generate
from train.evals.model import EvalModel


@dataclass
class EvalConfig:
    """How `train eval` asks: data root, options, subset, batch, and generation vs likelihood."""

    data_root: Path
    opts: EvalOptions = field(default_factory=EvalOptions)
    limit: int | None = None
    """Only the first N questions of each benchmark (MMBench: N base questions with all their rotations)."""
    batch: int = 8
    """Questions per forward pass (likelihood: answer candidates per pass)."""
    max_new_tokens: int = 16
    likelihood: bool = False
    """Yes/no and multiple-choice questions: pick the answer the model finds likeliest instead of generating."""


def _pixels(model: EvalModel, items: list[Item]) -> torch.Tensor:
    out = []
    for i in items:
        try:
            out.append(model.pixels(i.image))
        except OSError as e:
            raise BenchmarkError(f"{i.image_ref}: cannot read the image ({e})") from None
    return torch.stack(out).to(model.device)


def _generated(model: EvalModel, items: list[Item], cfg: EvalConfig, bar: tqdm) -> dict[str, dict]:
    prompts = {i.question_id: model.prompt_ids(i.text) for i in items}
    order = sorted(items, key=lambda i: len(prompts[i.question_id]))  # similar lengths together: less padding
    out = {}
    for start in range(0, len(order), cfg.batch):
        chunk = order[start : start + cfg.batch]
        new = generate(model, [prompts[i.question_id] for i in chunk], _pixels(model, chunk), cfg.max_new_tokens)
        for item, ids in zip(chunk, new, strict=True):
            out[item.question_id] = {"text": model.tokenizer.decode(ids, skip_special_tokens=True).strip()}
        bar.update(len(chunk))
    return out


def spellings(choice: str) -> list[str]:
    """The answers a choice stands for when its likelihood is taken: itself, and its lower case when that is a word.

    The parsers the scores go through read "Yes" and "yes" as the same answer (LLaVA's POPE parse, MME's), and a
    model trained on VQA-style short answers writes them in lower case: ranking "Yes" against "No" alone would compare
    two spellings it never learnt. Option letters ("A") keep their one spelling ("a" is another word).
    """
    lower = choice.lower()
    return [choice, lower] if len(choice) > 1 and choice.isalpha() and lower != choice else [choice]


def _ranked(model: EvalModel, items: list[Item], cfg: EvalConfig, bar: tqdm) -> dict[str, dict]:
    rows = [
        (i, k, *model.encode(i.text, s)) for i in items for k, c in enumerate(i.choices or []) for s in spellings(c)
    ]
    scores: dict[str, list[list[float]]] = {i.question_id: [[] for _ in i.choices or []] for i in items}
    left = {i.question_id: sum(len(spellings(c)) for c in i.choices or []) for i in items}  # rows still to score
    for start in range(0, len(rows), cfg.batch):
        chunk = rows[start : start + cfg.batch]
        pixels = _pixels(model, [r[0] for r in chunk])
        logp = answer_logprobs(model, [r[2] for r in chunk], [r[3] for r in chunk], pixels)
        for (item, k, _, _), lp in zip(chunk, logp.tolist(), strict=True):
            scores[item.question_id][k].append(lp)
            left[item.question_id] -= 1
            bar.update(int(left[item.question_id] == 0))
    out = {}
    for i in items:
        # a choice's log-probability: of any of its spellings
        lps = [torch.tensor(per).logsumexp(0).item() for per in scores[i.question_id]]
        best = max(range(len(lps)), key=lps.__getitem__)
        probs = torch.tensor(lps).softmax(0).tolist()
        out[i.question_id] = {"text": i.choices[best], "score": probs[0], "logprobs": lps}  # score: P(first choice)
    return out


def answer_items(model: EvalModel, items: list[Item], cfg: EvalConfig, desc: str = "") -> list[dict]:
    """LLaVA-form answer lines, in the items' order (a progress bar with ETA counts questions)."""
    ranked = [i for i in items if cfg.likelihood and i.choices]
    free = [i for i in items if not (cfg.likelihood and i.choices)]
    with progress(total=len(items), desc=desc, unit="q") as bar:
        answers = _generated(model, free, cfg, bar) if free else {}
        answers |= _ranked(model, ranked, cfg, bar) if ranked else {}
    return [{"question_id": i.question_id, "prompt": i.text, **answers[i.question_id]} for i in items]


def _images_digest(items: list[Item]) -> dict[str, Any]:
    digest, seen = hashlib.sha256(), set()
    for i in items:
        if isinstance(i.image, Path) and i.image_ref not in seen:
            seen.add(i.image_ref)
            digest.update(f"{i.image_ref}\0{sha256_file(i.image)}\n".encode())
    return {"n": len(seen), "sha256": digest.hexdigest()} if seen else {"n": 0, "embedded": True}


def _shown_prompt(model: EvalModel, item: Item) -> str:
    text = model.tokenizer.decode(model.prompt_ids(item.text))
    return re.sub(r"(<image>)+", "<image>", text)


def benchmark_card(bench: Benchmark, items: list[Item], cfg: EvalConfig, model: EvalModel | None) -> dict:
    """The card entry of one benchmark: files read with their sha256, images digest, prompt, options that apply."""
    root = benchmark_root(bench, cfg.data_root)
    card: dict[str, Any] = {
        "folder": str(root),
        "files": {p.relative_to(root).as_posix(): sha256_file(p) for p in bench.files(root, cfg.opts)},
        "images": _images_digest(items),
        "questions": len(items),
        "limit": cfg.limit,
        "mode": "likelihood" if cfg.likelihood and bench.kind != "open" else "generate",
        "instruction": items[0].text.rsplit("\n", 1)[-1] if items else "",
    }
    if card["mode"] == "likelihood":
        card["likelihood_spellings"] = "each choice and its lower case (option letters: one)"  # `spellings`
    if model is not None and items:
        card["example_prompt"] = _shown_prompt(model, items[0])
    if bench.name == "textvqa":
        card["ocr_tokens"] = cfg.opts.ocr_tokens
    return card


def tinymix_version() -> str:
    try:
        return importlib.metadata.version("tinymix")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_eval(
    model: EvalModel,
    benchmarks: list[Benchmark],
    cfg: EvalConfig,
    out: str | Path,
    per_benchmark: dict[str, EvalConfig] | None = None,
) -> dict[str, dict]:
    """Evaluate `model` on each benchmark; write answers, scores and the card under `out`; return the scores.

    `per_benchmark`: a benchmark's own config (limit, likelihood …) in place of `cfg`, recorded in its card entry.
    """
    out = Path(out)
    per_benchmark = per_benchmark or {}
    card: dict[str, Any] = {
        "tinymix_version": tinymix_version(),
        "model": model.card(),
        "options": asdict(cfg.opts),
        "limit": cfg.limit,
        "batch": cfg.batch,
        "max_new_tokens": cfg.max_new_tokens,
        "benchmarks": {},
    }
    scores = {}
    for bench in benchmarks:
        bcfg = per_benchmark.get(bench.name, cfg)
        items = read_items(bench, bcfg.data_root, bcfg.opts, bcfg.limit)
        card["benchmarks"][bench.name] = benchmark_card(bench, items, bcfg, model)
        answers = answer_items(model, items, bcfg, desc=bench.name)
        write_jsonl(out / bench.name / "answers.jsonl", answers)
        scores[bench.name] = bench.score(items, {a["question_id"]: a for a in answers})
        (out / bench.name / "scores.json").write_text(json.dumps(scores[bench.name], indent=2) + "\n")
        if bench.upload is not None:
            upload = bench.upload(items, {a["question_id"]: a for a in answers})
            (out / bench.name / "upload.json").write_text(json.dumps(upload) + "\n")
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return scores


def write_questions(benchmarks: list[Benchmark], cfg: EvalConfig, path: str | Path) -> int:
    """`--questions-only`: the questions `run_eval` would ask, one line each (with the benchmark's name)."""
    rows = []
    for bench in benchmarks:
        items = read_items(bench, cfg.data_root, cfg.opts, cfg.limit)
        rows += [{"benchmark": bench.name, **r} for r in question_rows(items)]
    write_jsonl(path, rows)
    return len(rows)
