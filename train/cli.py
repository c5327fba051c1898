"""`train`: launch the manifest's stages on DeepSpeed, estimate memory, and generate with an exported model.

`train launch` runs in this process for one rank; with `--nproc N` or `--hostfile F` it starts the ranks
(torchrun-style on this machine, DeepSpeed's launcher across machines), each running `train rank`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mixer.cli_errors import OneLineErrors, fail
from mixer.manifest import Manifest, load_manifest
from mixer.manifest.checks import output_problem

# OneLineErrors: a malformed manifest or a missing build / export is one line per problem and exit code 2.
app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, help=__doc__)


def _manifest(path: Path) -> Manifest:
    """The validated manifest (its data files need not be here: the build is) with its tokenizer on this machine."""
    return load_manifest(path, check_paths=False, check_tokenizer=True)


@app.command()
def launch(
    manifest: Path = typer.Argument(..., help="The manifest YAML (built with `mixer build`)."),
    stages: str | None = typer.Option(None, help="Stages to run: 1-4, 2, or names: warmup,pretrain (default: all)."),
    nproc: int = typer.Option(1, help="Ranks on this machine."),
    hostfile: str | None = typer.Option(None, help="DeepSpeed hostfile: run across machines."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoints (finished stages are skipped)."),
    out: str | None = typer.Option(None, help="Build folder or URL (default: the manifest's output)."),
    run_dir: str | None = typer.Option(
        None, help="Checkpoints and the export (default: OUT/run; needed when OUT is a URL such as s3://)."
    ),
    workers: int = typer.Option(2, help="Loader worker processes per rank."),
) -> None:
    """Train the manifest's stages in order; export a 🤗-loadable model after the last stage."""
    m = _manifest(manifest)
    from train.pipeline import parse_stages

    try:
        parse_stages(m, stages)
    except ValueError as e:
        fail([str(e)])
    for option, value in (("--out", out), ("--run-dir", run_dir)):
        if value and output_problem(value):
            fail([f"{option}: {output_problem(value)}"])
    if nproc == 1 and hostfile is None:
        rank(manifest, stages, resume, out, run_dir, workers)
        return
    from train.launch import launch as start_ranks

    program = ["-m", "train.cli", "rank", str(manifest), "--workers", str(workers)]
    program += ["--stages", stages] if stages else []
    program += ["--resume"] if resume else []
    program += ["--out", out] if out else []
    program += ["--run-dir", run_dir] if run_dir else []
    raise typer.Exit(start_ranks(program, nproc=nproc, hostfile=hostfile))


@app.command(hidden=True)
def rank(
    manifest: Path = typer.Argument(...),
    stages: str | None = typer.Option(None),
    resume: bool = typer.Option(False),
    out: str | None = typer.Option(None),
    run_dir: str | None = typer.Option(None),
    workers: int = typer.Option(2),
) -> None:
    """One rank of `train launch` (started by the launcher)."""
    from train.loop import NonFiniteLossError
    from train.pipeline import parse_stages, train

    m = _manifest(manifest)
    try:
        report = train(m, parse_stages(m, stages), out=out, run=run_dir, resume=resume, workers=workers)
    except (NonFiniteLossError, ValueError) as e:
        fail([f"train: {e}"])
    for name, info in report.stages.items():
        typer.echo(f"stage {name}: {json.dumps({k: v for k, v in info.items() if k != 'loader'})}")
    if report.export:
        typer.echo(f"export: {report.export}")


@app.command()
def demo(
    manifest: Path = typer.Option(Path("manifests/demo.yaml"), help="The demo manifest."),
    seed: int = typer.Option(0, help="Seed of the demo corpus."),
    workers: int = typer.Option(1, help="Loader worker processes."),
) -> None:
    """The whole job on the embedded default: demo data → Ray build → plans → 4 trained stages → held-out accuracy."""
    from train.demo import run

    run(manifest, seed, workers=workers)


@app.command(hidden=True)
def proxy(
    manifest: Path = typer.Argument(...),
    ablation: str = typer.Option(...),
    variant: str = typer.Option(...),
    mixture: str = typer.Option(..., help="The variant's shares as JSON."),
    result: Path = typer.Option(..., help="Where to write the result JSON."),
) -> None:
    """One ablation variant's proxy run (started by `mixer ablate`)."""
    from train.proxy import run_proxy

    out = run_proxy(_manifest(manifest), ablation, variant, json.loads(mixture))
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(out, indent=2) + "\n")


@app.command()
def estimate(manifest: Path = typer.Argument(..., help="The manifest YAML.")) -> None:
    """Parameters (total and trainable) per stage, and DeepSpeed's ZeRO-2/3 memory estimates."""
    from train.estimate import estimate_manifest

    typer.echo(estimate_manifest(_manifest(manifest)))


@app.command()
def generate(
    export: Path = typer.Argument(..., help="An export folder written by `train launch`."),
    image: Path = typer.Option(..., help="Image file."),
    prompt: str = typer.Option(..., help="The question or instruction."),
    max_new_tokens: int = typer.Option(32, help="Tokens to generate."),
) -> None:
    """Answer a prompt about an image with an exported model (greedy)."""
    from train.generate import answer
    from train.model.export import EXPORT_JSON

    try:
        typer.echo(answer(export, image, prompt, max_new_tokens))
    except (json.JSONDecodeError, KeyError) as e:  # the export's own description is damaged
        fail([f"{export / EXPORT_JSON}: not a tinymix export description: {type(e).__name__}: {e}"])
    except (OSError, ValueError) as e:
        fail([f"generate: {e}"])


if __name__ == "__main__":
    sys.exit(app())
