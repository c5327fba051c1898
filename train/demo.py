"""`train demo` / `make demo`: the whole job on the embedded default, from nothing to a trained, evaluated model.

`mixer`'s part (demo corpus served on 127.0.0.1, tokenizer, validate, Ray build, length index, plans, inspect),
then all four stages on DeepSpeed on this machine, the export, and held-out VQA accuracy of the untrained model
(the same initialisation the run started from) against the trained one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer

from mixer.contract import StageContract
from mixer.demo.run import run_demo, say
from mixer.evalset import load_items
from mixer.manifest import Manifest
from mixer.tokenizer import load_tokenizer
from train.evaluate import evaluate
from train.generate import usage_hint
from train.model import build_vlm
from train.model.export import load_export
from train.pipeline import train


def held_out(m: Manifest, vlm: torch.nn.Module, tokenizer: object) -> dict:
    """Accuracy on the demo's eval split for the last stage's sources, with its template and image size."""
    last = m.stages[-1]
    items = load_items(Path(m.data_root) / "eval" / "eval.json", sources=list(last.mixture))
    return evaluate(
        vlm,
        tokenizer,
        items,
        template=last.template,
        image_size=last.image_size,
        mean_std=StageContract.read(m.output, last.name).mean_std,
    )


def run(manifest: Path, seed: int = 0, ray_address: str | None = None, workers: int = 1) -> dict:
    m = run_demo(manifest, seed, ray_address)
    tokenizer = load_tokenizer(m.model.tokenizer_path())
    torch.manual_seed(m.seed)  # the initialisation `train` starts from
    untrained = held_out(m, build_vlm(m.model, tokenizer, image_size=m.stages[-1].image_size), tokenizer)
    say(f"train launch {manifest} (DeepSpeed ZeRO-{m.deepspeed.zero_stage} on this machine, 4 stages)")
    report = train(m, list(range(len(m.stages))), resume=True, workers=workers)
    for name, info in report.stages.items():
        if "first_loss" in info:
            typer.echo(
                f"    {name:>12}: {info['steps']} steps, loss {info['first_loss']:.3f} → {info['last_loss']:.3f}"
            )
        else:
            typer.echo(f"    {name:>12}: {info['skipped']}")
    vlm, tok = load_export(report.export)
    trained = held_out(m, vlm, tok)
    say(
        f"held-out VQA accuracy ({trained['n']} questions): untrained {untrained['accuracy']:.1%} → "
        f"trained {trained['accuracy']:.1%}"
    )
    for source, acc in trained["by_source"].items():
        typer.echo(f"    {source:>10}: {untrained['by_source'].get(source, 0.0):.1%} → {acc:.1%}")
    for ex in trained["examples"]:
        typer.echo(f"    Q: {ex['question'].splitlines()[0]}  A: {ex['answer']!r}  (reference {ex['reference']!r})")
    result = {"untrained": untrained, "trained": trained, "stages": report.stages, "export": report.export}
    (Path(m.output) / "demo_result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    say(f"export: {report.export}   (try: {usage_hint(report.export)})")
    return result
