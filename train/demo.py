"""`train demo` / `make demo`: the whole job on the embedded default, from nothing to a trained, evaluated model.

`mixer`'s part (demo corpus served on 127.0.0.1, tokenizer, the demo's CLIP tower, validate, Ray build, length index,
plans, inspect), then the four stages on DeepSpeed on this machine. After each stage the manifest's `eval:` section
asks the demo's held-out benchmarks (POPE and VQAv2 in their native files, `demo-data/benchmarks`) and scores them
with the official scorers of `mixer.evals`, as in any run; the demo asks the same questions once more with the
images shuffled across questions. A model that looks at its images scores well above that control; one that answers
from priors scores the same on both.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import typer

from mixer.contract import StageContract
from mixer.demo.run import run_demo, say
from mixer.evals import Item, get_benchmark, read_items
from mixer.manifest import Manifest
from mixer.tokenizer import load_tokenizer
from train.evals import EvalConfig, answer_items, from_vlm
from train.evals.stage import eval_configs
from train.generate import usage_hint
from train.model import build_vlm
from train.pipeline import default_threads, load_stage_weights, run_dir, train

# Per benchmark: the headline number printed per stage (a key of its scores) and its label.
HEADLINES = {"pope": ("mean_accuracy", "POPE acc"), "vqav2": ("accuracy", "VQAv2 acc")}


def shuffled(items: list[Item], seed: int) -> list[Item]:
    """The same questions, each shown another question's image.

    The distinct images are permuted in one cycle, so no question keeps its image and questions that shared an image
    still share one (POPE asks four questions of each).
    """
    images = sorted({i.image_ref: i.image for i in items}.items())
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    moved = {images[order[k]][0]: images[order[(k + 1) % len(order)]] for k in range(len(order))}
    return [replace(i, image=moved[i.image_ref][1], image_ref=moved[i.image_ref][0]) for i in items]


def ask(model: Any, configs: dict[str, EvalConfig], shuffle_seed: int | None, label: str) -> dict[str, dict]:
    """Each benchmark's official scores for `model`, with the images shuffled when `shuffle_seed` is given."""
    scores = {}
    for name, cfg in configs.items():
        bench = get_benchmark(name)
        items = read_items(bench, cfg.data_root, cfg.opts, cfg.limit)
        if shuffle_seed is not None:
            items = shuffled(items, shuffle_seed)
        answers = answer_items(
            model, items, cfg, desc=f"{label} {name}{' shuffled' if shuffle_seed is not None else ''}"
        )
        scores[name] = bench.score(items, {a["question_id"]: a for a in answers})
    return scores


def _eval_model(m: Manifest, vlm: Any, tokenizer: Any, stage: int) -> Any:
    """The VLM prompted as stage `stage` trains it (its template and image size), as the per-stage eval does."""
    st = m.stages[stage]
    return from_vlm(vlm, tokenizer, st.template, st.image_size, StageContract.read(m.output, st.name).mean_std)


def _row(label: str, real: dict[str, dict], control: dict[str, dict]) -> str:
    cells = [
        f"{real[name][key]:6.1f}% {control[name][key]:6.1f}%" for name, (key, _) in HEADLINES.items() if name in real
    ]
    return f"    {label:<16}" + "   ".join(cells)


def _header(names: list[str]) -> str:
    top = "".join(f"{HEADLINES[n][1]:<19}" for n in names)
    sub = "   ".join("images shuffled" for _ in names)
    return f"    {'':<16}{top}\n    {'checkpoint':<16}{sub}"


def run(manifest: Path, seed: int = 0, ray_address: str | None = None, workers: int = 1) -> dict:
    m = run_demo(manifest, seed, ray_address)
    if "OMP_NUM_THREADS" not in os.environ:  # the evaluations here run in this process, as train() would set it
        torch.set_num_threads(default_threads(workers))
    if m.eval is None:
        raise ValueError(f"{manifest}: the demo needs an eval: section (its benchmarks)")
    tokenizer = load_tokenizer(m.model.tokenizer_path())
    configs = eval_configs(m)
    last = len(m.stages) - 1
    torch.manual_seed(m.seed)  # the initialisation `train` starts from
    untrained = build_vlm(m.model, tokenizer, image_size=m.stages[last].image_size)
    say("held-out benchmarks of the untrained model (the last stage's template and image size)")
    table = {"untrained": {"images": ask(_eval_model(m, untrained, tokenizer, last), configs, None, "untrained")}}
    table["untrained"]["shuffled"] = ask(_eval_model(m, untrained, tokenizer, last), configs, seed, "untrained")
    say(f"train launch {manifest} (DeepSpeed ZeRO-{m.deepspeed.zero_stage} on this machine, 4 stages)")
    runs = run_dir(m)
    stages: dict[str, dict] = {}
    export = None
    for i, stage in enumerate(m.stages):
        report = train(m, [i], resume=True, workers=workers)
        stages |= report.stages
        export = report.export or export
        vlm = build_vlm(m.model, tokenizer, image_size=stage.image_size)
        load_stage_weights(m, i, vlm)
        label = f"{i + 1} {stage.name}"
        scores = json.loads((runs / "eval" / f"{i + 1}-{stage.name}" / "scores.json").read_text())
        table[label] = {"images": scores, "shuffled": ask(_eval_model(m, vlm, tokenizer, i), configs, seed, label)}
    for name, info in stages.items():
        if "first_loss" in info:
            typer.echo(
                f"    {name:>12}: {info['steps']} steps, loss {info['first_loss']:.3f} → {info['last_loss']:.3f}"
            )
        else:
            typer.echo(f"    {name:>12}: {info['skipped']}")
    say(f"held-out benchmarks after each stage, next to the same questions with the images shuffled ({runs / 'eval'})")
    typer.echo(_header([n for n in HEADLINES if n in configs]))
    for label, row in table.items():
        typer.echo(_row(label, row["images"], row["shuffled"]))
    final = table[f"{last + 1} {m.stages[last].name}"]
    if "pope" in final["images"]:
        typer.echo("    POPE of the trained model per file (accuracy / precision / recall / F1 / yes-ratio):")
        for split in ("random", "popular", "adversarial"):
            for kind in ("images", "shuffled"):
                s = final[kind]["pope"][split]
                typer.echo(
                    f"      {split:<12} {kind:<9} {s['accuracy']:5.1f} / {s['precision']:5.1f} / {s['recall']:5.1f}"
                    f" / {s['f1']:5.1f} / {s['yes_ratio']:5.1f}"
                )
    result = {"benchmarks": table, "stages": stages, "export": export}
    (Path(m.output) / "demo_result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    say(f"export: {export}   (try: train eval {export} --benchmarks pope --data-root {configs_root(configs)})")
    say(f"or: {usage_hint(export)}")
    return result


def configs_root(configs: dict[str, EvalConfig]) -> Path:
    return next(iter(configs.values())).data_root
