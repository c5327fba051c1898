"""`mixer demo`: the data half of the demo on the embedded default, from nothing to inspected stage plans.

Writes the demo corpus (its URL images served on 127.0.0.1 for the duration), trains the demo tokenizer and the demo's
vision tower when the manifest names one inside the corpus folder (`mixer.demo.tower`), validates
the demo manifest, builds its shards on a local Ray cluster, length-indexes and plans every stage and prints the
inspect summary. `train demo` (what `make demo` runs) continues from here with training and evaluation.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mixer.build import build, plan
from mixer.demo import write_demo_corpus
from mixer.demo.tower import train_tower
from mixer.inspect import inspect_build
from mixer.inspect.plots import write_plots
from mixer.inspect.text import render
from mixer.manifest import Manifest, load_manifest
from mixer.summary import manifest_summary
from mixer.tokenizer import train_tokenizer
from shards.serve import FolderServer


def say(msg: str) -> None:
    typer.secho(f"==> {msg}", bold=True)


DEMO_PORT = 8765  # the corpus names its URLs, so a fixed port keeps the files identical from run to run


def _serve(root: Path) -> FolderServer:
    """Serve the corpus on DEMO_PORT, or on any free port when another program holds it."""
    try:
        return FolderServer(root, DEMO_PORT).start()
    except OSError:
        return FolderServer(root).start()


def run_demo(manifest: Path, seed: int = 0, ray_address: str | None = None) -> Manifest:
    """Corpus → tokenizer → (demo tower) → validate → shards → length index → plans → inspect; returns the manifest."""
    m = load_manifest(manifest, check_paths=False)
    data_root = Path(m.data_root)
    with _serve(data_root) as server:
        base_url = server.url
        say(f"demo corpus → {data_root} (images served at {base_url})")
        summary = write_demo_corpus(data_root, base_url=base_url, seed=seed)
        typer.echo("    " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items()))
        tok_dir = Path(m.model.tokenizer_path())
        say(f"demo tokenizer → {tok_dir}")
        texts = (data_root / "tokenizer_corpus.txt").read_text(encoding="utf-8").splitlines()
        vocab = (m.model.llm.config or {}).get("vocab_size", 2000)
        tok = train_tokenizer(texts, tok_dir, vocab_size=vocab)
        typer.echo(f"    vocabulary {len(tok)}")
        tower = m.model.vision.name_or_path
        if tower is not None and Path(tower).resolve().is_relative_to(data_root.resolve()):
            # the demo's tower lives in its corpus folder and is trained here; a real manifest names a pretrained one
            say(f"demo vision tower → {tower} (a tiny CLIP ViT, trained to tag the corpus's captioned images)")
            info = train_tower(data_root, tower, base_url=base_url, seed=seed)
            typer.echo(f"    {info['pairs']} images, tag loss {info['first_loss']:.3f} → {info['last_loss']:.3f}")
        say(f"mixer validate {manifest}")
        m = load_manifest(manifest)
        typer.echo(manifest_summary(m))
        say(f"mixer build {manifest} (local Ray cluster)")
        reports = build(m, ray_address=ray_address)
    for name, r in reports.items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r.by_status.items()) if v)
        typer.echo(f"    {name:>8}: {r.input_rows} rows → {counts}")
    say("length index and stage plans")
    plan(m, ray_address=ray_address)
    say(f"mixer inspect {m.output}")
    report = inspect_build(m.output)
    report["plots"] = write_plots(report)
    typer.echo(render(report), nl=False)
    return m
