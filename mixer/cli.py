"""`mixer`: validate a manifest, write the demo corpus, build shards and plans, inspect and ablate.

Each command is a thin story over library code; errors in user input exit with code 2 and one line per problem.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mixer.cli_errors import OneLineErrors, fail
from mixer.cli_options import Ablation, DataRoot, Out, Parallel, RayAddress, Set
from mixer.manifest import load_manifest
from mixer.summary import manifest_summary

VERIFY_SHOWN = 50  # damage lines `mixer verify` prints; past it, a count (a lost shard names every key)

# OneLineErrors: a malformed manifest or a missing file is one line per problem and exit code 2, in every command.
app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def validate(
    manifest: Path = typer.Argument(..., help="The manifest YAML."),
    no_paths: bool = typer.Option(False, "--no-paths", help="Check the schema only, not that input files exist."),
    data_root: DataRoot = None,
    out: Out = None,
    set_: Set = None,
) -> None:
    """Check a manifest; print a summary, or every problem with its field path."""
    m = load_manifest(manifest, check_paths=not no_paths, data_root=data_root, output=out, overrides=set_ or [])
    typer.echo(manifest_summary(m))


@app.command()
def build(
    manifest: Path = typer.Argument(..., help="The manifest YAML."),
    sources: str | None = typer.Option(None, help="Comma-separated source names (default: all)."),
    out: Out = None,
    ray_address: RayAddress = None,
    data_root: DataRoot = None,
    set_: Set = None,
    shards_only: bool = typer.Option(False, help="Stop after the shards (no length index, no plans)."),
    yes: bool = typer.Option(
        False, "--yes", help="Write plans estimated past 1 GiB (a huge `steps` is usually a typo)."
    ),
) -> None:
    """Build shards, the length index and every stage's plan (resumable: finished work is reused)."""
    from mixer.build import build as run_build
    from mixer.build import plan as run_plan
    from mixer.build import report_lines
    from mixer.planning import PLAN_BYTES_BOUND, PlanError, plan_size_problem
    from shards.build import BuildError

    m = load_manifest(manifest, data_root=data_root, output=out, overrides=set_ or [])
    bound = None if yes else PLAN_BYTES_BOUND
    # Before any shard is built: a lower bound from the manifest alone (the exact estimate follows the length index).
    too_large = [p for i, st in enumerate(m.stages) if (p := plan_size_problem(st, i, bound))]
    if too_large and not (shards_only or sources):
        fail([f"{manifest}: {p}" for p in too_large])
    try:
        reports = run_build(m, out, sources.split(",") if sources else None, ray_address)
    except BuildError as e:
        fail(["build incomplete (rerun to resume):", *str(e).splitlines()])
    except ValueError as e:
        fail([str(e)])
    for line in report_lines(reports):
        typer.echo(line)
    if shards_only or sources:
        return
    try:
        summaries = run_plan(m, out, ray_address, max_plan_bytes=bound)
    except PlanError as e:
        fail([f"{manifest}: {e}"])
    except (OSError, ValueError) as e:
        fail([f"planning failed (shards are built; rerun to resume): {type(e).__name__}: {e}"])
    from mixer.planning import plan_line, sequences_per_step

    for stage, s in summaries.items():
        typer.echo(plan_line(stage, s, sequences_per_step(m.stage(stage))))
    _after_build(str(out or m.output))


def _after_build(out: str) -> None:
    """The supervision audit's findings as warnings and OUT/report.html (the build stands either way)."""
    from mixer.inspect import InspectError, inspect_build

    try:
        report = inspect_build(out)
    except InspectError as e:
        typer.echo(f"warning: no supervision audit: {e}", err=True)
        return
    for stage, audit in report["audit"].items():
        for flag in audit["flags"]:
            typer.echo(f"warning: stage {stage}: {flag}", err=True)
    from mixer.inspect.report import write_html

    try:
        typer.echo(f"report: {write_html(report)}")
    except InspectError as e:
        typer.echo(f"warning: {e}", err=True)


@app.command()
def verify(build_dir: str = typer.Argument(..., help="The build's output folder or URL (s3://…).")) -> None:
    """Re-read every shard against its index and checksums; name each damaged shard and key (exit 2 if any)."""
    from shards.verify import verify_build

    try:
        report = verify_build(build_dir)
    except ValueError as e:
        fail([str(e)])
    for name, c in report.by_source.items():
        typer.echo(f"{name}: {c.samples} samples in {c.shards} shards, {c.problems} problems")
    typer.echo(f"{report.samples} samples in {report.shards} shards of {report.sources} sources checked")
    if report.damage:
        shown = [str(d) for d in report.damage[:VERIFY_SHOWN]]
        if len(report.damage) > VERIFY_SHOWN:
            shown.append(f"… and {len(report.damage) - VERIFY_SHOWN} more")
        fail([*shown, f"{len(report.damage)} problems, the first: {report.damage[0]}; rebuild with `mixer build`"])


@app.command()
def schema() -> None:
    """Print the manifest reference (every field, type, default and meaning) as Markdown."""
    from mixer.manifest.reference import manifest_reference

    typer.echo(manifest_reference())


@app.command("demo-data")
def demo_data(
    out: Path = typer.Argument(..., help="Folder to write the demo corpus into."),
    seed: int = typer.Option(0, help="Seed: the same seed gives byte-identical files."),
    base_url: str = typer.Option("http://127.0.0.1:8765", help="Where `mixer serve OUT` will serve the images."),
    scale: float = typer.Option(1.0, help="Multiply every family's row count."),
) -> None:
    """Write the demo corpus in the native formats of LAION, CC3M, CC12M, SBU, LLaVA, TextVQA, OCR-VQA, ChartQA."""
    from mixer.demo import write_demo_corpus

    summary = write_demo_corpus(out, base_url=base_url, seed=seed, scale=scale)
    for family, n in summary["counts"].items():
        typer.echo(f"{family:>10}: {n}")
    typer.echo(f"demo corpus written to {out}")


@app.command()
def serve(
    folder: Path = typer.Argument(..., help="Folder to serve."),
    port: int = typer.Option(8765, help="Port on 127.0.0.1 (0: any free port)."),
) -> None:
    """Serve a folder over HTTP on 127.0.0.1 (the demo corpus's URL images) until interrupted."""
    from shards.serve import serve_forever

    serve_forever(folder, port)


@app.command()
def demo(
    manifest: Path = typer.Option(Path("manifests/demo.yaml"), help="The demo manifest."),
    seed: int = typer.Option(0, help="Seed of the demo corpus."),
    ray_address: RayAddress = None,
) -> None:
    """The data half of the demo: demo corpus, tokenizer, validate, build, plans, inspect (`train demo` trains)."""
    from mixer.demo.run import run_demo

    run_demo(manifest, seed, ray_address)


@app.command()
def inspect(
    build_dir: str = typer.Argument(..., help="The build's output folder or URL (s3://…)."),
    stage: str | None = typer.Option(None, help="Only this stage (default: every built stage)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON (for scripts)."),
    plots: bool = typer.Option(True, help="Write OUT/stages/<stage>/inspect.png (shares and length distributions)."),
    write_report: bool = typer.Option(True, "--html/--no-html", help="Write OUT/report.html (self-contained)."),
    min_supervised_share: float | None = typer.Option(
        None, help="Flag a stage whose supervised (label) share of placed tokens is below this (default 0.01)."
    ),
) -> None:
    """Declared vs realised shares, epochs, lengths, packing, truncations and drops per stage; ablation results."""
    import json

    from mixer.inspect import InspectError, inspect_build
    from mixer.inspect.text import render

    try:
        report = inspect_build(build_dir, stage, min_supervised_share)
        if plots:
            from mixer.inspect.plots import write_plots

            report["plots"] = write_plots(report)
        if write_report:
            from mixer.inspect.report import write_html

            report["html"] = write_html(report)
    except InspectError as e:
        fail([str(e)])
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(render(report), nl=False)
    for name, path in report.get("plots", {}).items():
        typer.echo(f"plot {name}: {path}")
    if "html" in report:
        typer.echo(f"report: {report['html']}")


@app.command()
def ablate(
    manifest: Path = typer.Argument(..., help="The manifest YAML (built with `mixer build`)."),
    ablation: Ablation = None,
    parallel: Parallel = 1,
    data_root: DataRoot = None,
    out: Out = None,
    set_: Set = None,
    ray_address: RayAddress = None,
) -> None:
    """Train a proxy per mixture variant, evaluate per source, write a report with plots and a fitted suggestion.

    The proxies train through the trainer registered under the `tinymix.ablate` entry point (`train ablate`).
    """
    from mixer.ablate.run import ablate_command, find_runner

    runner = find_runner()
    if runner is None:
        fail(["mixer ablate: no proxy trainer is installed (entry point group tinymix.ablate); run `train ablate`"])
    load = {"data_root": data_root, "output": out, "overrides": set_ or []}
    for line in ablate_command(runner, manifest, ablation, parallel, load, ray_address):
        typer.echo(line)


if __name__ == "__main__":
    app()
