"""`train`: launch the manifest's stages on DeepSpeed, run ablation sweeps, estimate memory, generate and evaluate.

`train launch` runs in this process for one rank; with `--nproc N` or `--hostfile F` it starts the ranks
(torchrun-style on this machine, DeepSpeed's launcher across machines), each running `train rank`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mixer.cli_errors import OneLineErrors, fail
from mixer.cli_options import Ablation, DataRoot, Out, Parallel, RayAddress, Set, set_args
from mixer.manifest import Manifest, load_manifest
from mixer.manifest.checks import output_problem

# OneLineErrors: a malformed manifest or a missing build / export is one line per problem and exit code 2.
app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, help=__doc__)


def _manifest(
    path: Path, data_root: str | None = None, out: str | None = None, overrides: list[str] | None = None
) -> Manifest:
    """The validated manifest (its data files need not be here: the build is) with its tokenizer on this machine."""
    return load_manifest(
        path, check_paths=False, check_tokenizer=True, data_root=data_root, output=out, overrides=overrides or []
    )


@app.command()
def launch(
    manifest: Path = typer.Argument(..., help="The manifest YAML (built with `mixer build`)."),
    stages: str | None = typer.Option(None, help="Stages to run: 1-4, 2, or names: warmup,pretrain (default: all)."),
    nproc: int = typer.Option(1, help="Ranks on this machine."),
    hostfile: str | None = typer.Option(None, help="DeepSpeed hostfile: run across machines."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoints (finished stages are skipped)."),
    out: Out = None,
    data_root: DataRoot = None,
    set_: Set = None,
    run_dir: str | None = typer.Option(
        None, help="Checkpoints and the export (default: OUT/run; needed when OUT is a URL such as s3://)."
    ),
    workers: int = typer.Option(2, help="Loader worker processes per rank."),
    report_to: str | None = typer.Option(
        None, help="Step loggers, e.g. tensorboard,wandb (default: the manifest's report_to; jsonl always)."
    ),
) -> None:
    """Train the manifest's stages in order; export a 🤗-loadable model after the last stage."""
    m = _manifest(manifest, data_root, out, set_)
    from train.pipeline import parse_stages
    from train.report import parse_report_to

    try:
        picked = parse_stages(m, stages)
        if report_to is not None:
            parse_report_to(report_to)
    except ValueError as e:
        fail([f"--report-to: {e}" if "report_to" in str(e) else str(e)])
    if run_dir and output_problem(run_dir):
        fail([f"--run-dir: {output_problem(run_dir)}"])
    from mixer.planning import missing_plan

    missing = missing_plan(out or m.output, [m.stages[i].name for i in picked])
    if missing:  # before DeepSpeed and the model are set up: a build that is not there is the usual mistake
        fail([f"{missing}: no such file: build the stages first (mixer build {manifest})"])
    if resume:  # here, not in the ranks: a refusal is one line and exit code 2 on any number of ranks
        from train.checkpoint import resume_problem
        from train.pipeline import run_dir as runs

        try:
            problem = resume_problem(runs(m, out, run_dir), [(i, m.stages[i]) for i in picked])
        except ValueError as e:
            fail([str(e)])
        if problem:
            fail([f"--resume: {problem}"])
    if nproc == 1 and hostfile is None:
        rank(manifest, stages, resume, out, run_dir, workers, report_to, data_root, set_)
        return
    from train.launch import launch as start_ranks

    program = ["-m", "train.cli", "rank", str(manifest), "--workers", str(workers)]
    program += ["--stages", stages] if stages else []
    program += ["--resume"] if resume else []
    program += ["--out", out] if out else []
    program += ["--run-dir", run_dir] if run_dir else []
    program += ["--report-to", report_to] if report_to else []
    program += (["--data-root", data_root] if data_root else []) + set_args(set_)
    raise typer.Exit(start_ranks(program, nproc=nproc, hostfile=hostfile))


@app.command(hidden=True)
def rank(
    manifest: Path = typer.Argument(...),
    stages: str | None = typer.Option(None),
    resume: bool = typer.Option(False),
    out: str | None = typer.Option(None),
    run_dir: str | None = typer.Option(None),
    workers: int = typer.Option(2),
    report_to: str | None = typer.Option(None),
    data_root: DataRoot = None,
    set_: Set = None,
) -> None:
    """One rank of `train launch` (started by the launcher)."""
    from train.loop import NonFiniteLossError
    from train.pipeline import parse_stages, train
    from train.report import parse_report_to

    m = _manifest(manifest, data_root, out, set_)
    try:
        loggers = parse_report_to(report_to) if report_to else None
        report = train(
            m, parse_stages(m, stages), out=out, run=run_dir, resume=resume, workers=workers, report_to=loggers
        )
    except (NonFiniteLossError, ValueError) as e:
        fail([f"train: {e}"])
    for name, info in report.stages.items():
        typer.echo(f"stage {name}: {json.dumps({k: v for k, v in info.items() if k != 'loader'})}")
    if report.export:
        from train.model.hf_export import read_info

        typer.echo(f"export: {report.export}\n  {read_info(report.export).summary()}")


@app.command()
def demo(
    manifest: Path = typer.Option(Path("manifests/demo.yaml"), help="The demo manifest."),
    seed: int = typer.Option(0, help="Seed of the demo corpus."),
    workers: int = typer.Option(1, help="Loader worker processes."),
) -> None:
    """The whole job on the embedded default: demo data → Ray build → plans → 4 trained stages → held-out accuracy."""
    from train.demo import run

    run(manifest, seed, workers=workers)


@app.command()
def ablate(
    manifest: Path = typer.Argument(..., help="The manifest YAML (built with `mixer build`)."),
    ablation: Ablation = None,
    parallel: Parallel = 1,
    data_root: DataRoot = None,
    out: Out = None,
    set_: Set = None,
    ray_address: RayAddress = None,
    fit_on: str = typer.Option(
        "loss", help="What the mixture laws fit: loss (mean held-out loss) or BENCH.METRIC of eval: (pope.f1)."
    ),
) -> None:
    """Train a proxy per mixture variant, evaluate per source, write a report with plots and a fitted suggestion."""
    from mixer.ablate.run import ablate_command
    from train.ablate import ablate as sweep

    load = {"data_root": data_root, "output": out, "overrides": set_ or []}
    for line in ablate_command(sweep, manifest, ablation, parallel, load, ray_address, fit_on):
        typer.echo(line)


@app.command()
def estimate(manifest: Path = typer.Argument(..., help="The manifest YAML."), set_: Set = None) -> None:
    """Parameters (total and trainable) per stage, and DeepSpeed's ZeRO-2/3 memory estimates."""
    from train.estimate import estimate_manifest

    typer.echo(estimate_manifest(_manifest(manifest, overrides=set_)))


@app.command()
def generate(
    export: Path = typer.Argument(..., help="An export folder (`train launch` or `train export`)."),
    image: Path = typer.Option(..., help="Image file."),
    prompt: str = typer.Option(..., help="The question or instruction."),
    max_new_tokens: int = typer.Option(32, help="Tokens to generate."),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16: weights and activations."),
    int8: bool = typer.Option(False, help="Weight-only int8 (torchao on the CPU, bitsandbytes on a GPU)."),
    task: str = typer.Option("vqa", help="Record task whose template tag goes before the prompt (MiniGPT-v2)."),
) -> None:
    """Answer a prompt about an image with an exported model (greedy), through 🤗 for an hf export."""
    from train.generate import answer
    from train.model.export import EXPORT_JSON

    if not export.exists():
        fail([f"{export}: No such file or directory"])
    try:
        typer.echo(answer(export, image, prompt, max_new_tokens, dtype=dtype, int8=int8, task=task))
    except (json.JSONDecodeError, KeyError) as e:  # the export's own description is damaged
        fail([f"{export / EXPORT_JSON}: not a tinymix export description: {type(e).__name__}: {e}"])
    except (OSError, ValueError) as e:
        fail([f"generate: {e}"])


@app.command("export")
def export_command(
    source: Path = typer.Argument(
        ..., help="A run folder (OUT/run), a stage folder (RUN/checkpoints/NN-stage) or a --format tinymix export."
    ),
    out: Path = typer.Option(..., help="The export folder to write."),
    format: str = typer.Option(
        "hf",
        help="hf: 🤗-native Llava when the model fits it, else a remote-code bundle; "
        "tinymix: parts for tinymix's load_export.",
    ),
    manifest: Path | None = typer.Option(None, help="The manifest the run was trained with (run / stage folders)."),
) -> None:
    """Export a trained model; says which form it wrote and why."""
    from train.export import export_from

    m = _manifest(manifest) if manifest else None
    try:
        info = export_from(source, out, format, m)
    except (OSError, ValueError) as e:
        fail([f"export: {e}"])
    typer.echo(info.summary())
    typer.echo(f"export: {out}")


def _eval_options(values: list[str]):
    """`--option key=value` pairs → EvalOptions (its field names; booleans as true/false)."""
    from dataclasses import fields

    from mixer.evals import EvalOptions

    known = {f.name: f for f in fields(EvalOptions)}
    picked: dict[str, object] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or key not in known:
            fail([f"--option {value!r}: expected KEY=VALUE with KEY one of {', '.join(known)}"])
        is_bool = isinstance(getattr(EvalOptions(), key), bool)
        if is_bool and raw.lower() not in ("true", "false"):
            fail([f"--option {key}: expected true or false, got {raw!r}"])
        picked[key] = raw.lower() == "true" if is_bool else raw
    return EvalOptions(**picked)


@app.command("eval")
def eval_(
    model: str | None = typer.Argument(None, help="An export folder, or a run / build folder holding one."),
    benchmarks: str = typer.Option(..., help="Comma-separated: vqav2,gqa,textvqa,vizwiz,pope,mme,scienceqa,…"),
    data_root: Path = typer.Option(..., help="Folder holding each benchmark's native files (docs/eval.md)."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N questions of each benchmark."),
    batch: int = typer.Option(8, min=1, help="Questions per forward pass."),
    out: Path | None = typer.Option(None, help="Output folder (default: eval/ beside the export)."),
    likelihood: bool = typer.Option(False, help="Yes/no and multiple choice: rank the answers by likelihood."),
    max_new_tokens: int = typer.Option(16, min=1, help="Tokens to generate per answer."),
    option: list[str] = typer.Option([], help="Benchmark option KEY=VALUE (ocr_tokens=true, vqav2_split=…)."),
    questions_only: Path | None = typer.Option(None, help="Write the question list to this file; no model."),
) -> None:
    """Ask a model the standard benchmarks from their native files; write answers, scores and an eval card."""
    from mixer.evals import BenchmarkError, parse_benchmarks
    from train.evals import EvalConfig, find_export, load_for_eval, run_eval, write_questions

    cfg = EvalConfig(data_root, _eval_options(option), limit, batch, max_new_tokens, likelihood)
    try:
        benches = parse_benchmarks(benchmarks)
        if questions_only is not None:
            typer.echo(f"{write_questions(benches, cfg, questions_only)} questions → {questions_only}")
            return
        if model is None:
            fail(["eval: name the model (an export, run or build folder), or pass --questions-only FILE"])
        export = find_export(model)
        scores = run_eval(load_for_eval(export), benches, cfg, out or export.parent / "eval")
    except (BenchmarkError, ValueError, OSError) as e:
        fail([f"eval: {e}"])
    typer.echo(json.dumps(scores, indent=2))


@app.command()
def score(
    benchmark: str = typer.Option(..., help="The benchmark's name (see `train eval --help`)."),
    data_root: Path = typer.Option(..., help="Folder holding the benchmark's native files."),
    predictions: Path = typer.Option(..., help="Answers file: JSON lines {question_id, text} (LLaVA's form)."),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N questions (as `train eval --limit`)."),
    option: list[str] = typer.Option([], help="Benchmark option KEY=VALUE, as for `train eval`."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Score any answers file with the benchmark's official rules (the scorer `train eval` uses)."""
    from mixer.evals import BenchmarkError, get_benchmark, score_answers

    try:
        scores = score_answers(get_benchmark(benchmark), data_root, predictions, _eval_options(option), limit)
    except (BenchmarkError, OSError) as e:
        fail([f"score: {e}"])
    if as_json:
        typer.echo(json.dumps(scores, indent=2))
        return
    for key, value in scores.items():
        typer.echo(f"{key:>24}: {json.dumps(value) if isinstance(value, dict) else value}")


if __name__ == "__main__":
    sys.exit(app())
