"""`train launch` on one rank: the manifest's stages in order, each from the previous stage's weights, then export.

The story per stage: model (built once, or the previous stage's final weights) → LoRA merged or kept as the stage
says → freeze for the stage → the stage's planned loader → DeepSpeed steps with checkpoints → final weights saved.
`resume` skips finished stages (their final weights are loaded) and continues an unfinished one from its last
checkpoint, data position included.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model

from mixer.contract import StageContract
from mixer.loader import StageLoader
from mixer.manifest import Manifest
from mixer.planning import plan_dir
from mixer.tokenizer import load_tokenizer
from shards import fs
from train import checkpoint, progress
from train import report as loggers
from train.engine import init_distributed
from train.evals.stage import after_stage
from train.loop import StageResult, run_stage
from train.model import build_vlm
from train.model.hf_export import write_export
from train.model.lora import apply_lora, has_lora, merge_lora
from train.stagerun import StageRun

FINAL = "final.safetensors"


@dataclass
class RunReport:
    """What a launch did: per stage its first and last loss and steps, and the export folder."""

    stages: dict[str, dict] = field(default_factory=dict)
    export: str | None = None


def run_dir(m: Manifest, out: str | None = None, run: str | None = None) -> Path:
    """Where checkpoints and the export go: `run`, else OUT/run (OUT must then be a filesystem path)."""
    if run:
        return Path(run)
    out = out or m.output
    if "://" in out:
        raise ValueError(
            f"the build is at {out}: checkpoints need a filesystem path (local or shared); pass --run-dir DIR"
        )
    return Path(out) / "run"


def parse_stages(m: Manifest, spec: str | None) -> list[int]:
    """`1-4`, `2`, `warmup,pretrain` (1-based numbers or names) → stage indexes; ValueError naming the bad part."""
    if not spec:
        return list(range(len(m.stages)))
    names = [s.name for s in m.stages]
    picked: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part and all(x.strip().isdigit() for x in part.split("-", 1)):
            lo, hi = (int(x) for x in part.split("-", 1))
            picked += range(lo - 1, hi)
        elif part.isdigit():
            picked.append(int(part) - 1)
        elif part in names:
            picked.append(names.index(part))
        else:
            raise ValueError(f"--stages: {part!r} is not a stage number (1-{len(names)}) or name ({', '.join(names)})")
    bad = [i + 1 for i in picked if not 0 <= i < len(names)]
    if bad:
        raise ValueError(f"--stages: no stage {bad[0]}; the manifest has {len(names)}")
    if picked != sorted(set(picked)) or picked != list(range(picked[0], picked[-1] + 1)):
        raise ValueError(f"--stages: stages must be consecutive and in order, got {spec!r}")
    return picked


def plan_digest(out: str, stage: str) -> str:
    """A stage plan's identity: the hash of its summary.json and window table (small, read whole).

    A plan rebuilt from other data, or by another planner, changes it; the same plan gives the same digest.
    """
    digest = hashlib.sha256()
    for name in ("summary.json", "windows.npy"):
        digest.update(fs.read_bytes(fs.join(plan_dir(out, stage), name)))
    return digest.hexdigest()[:16]


def _tokenizer_digest(path: str) -> str:
    """sha256 of a local tokenizer folder's files (a retrained tokenizer changes the embeddings), else its name."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def stage_fingerprint(m: Manifest, index: int, out: str | None = None) -> str:
    """Hash of everything that decides stage `index`'s weights: model, seed, DeepSpeed, stages and plans up to it.

    The plans are those of the build at `out` (default: the manifest's output).
    """
    stages = m.stages[: index + 1]
    doc = {
        "model": m.model.model_dump(mode="json"),
        "seed": m.seed,
        "deepspeed": m.deepspeed.model_dump(mode="json"),
        "stages": [s.model_dump(mode="json") for s in stages],
        "plans": [plan_digest(out or m.output, s.name) for s in stages],
        "tokenizer": _tokenizer_digest(m.model.tokenizer_path()),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _final_meta(path: Path) -> dict:
    return json.loads((path / "final.json").read_text())


STARTED = "fingerprint.txt"  # the configuration a stage's checkpoints were written under (stage_fingerprint)


def _recorded_fingerprint(path: Path) -> str | None:
    """The fingerprint of the run that finished (final.json) or started (STARTED) this stage folder, else None."""
    if (path / FINAL).exists() and (path / "final.json").exists():
        return _final_meta(path).get("fingerprint")
    return (path / STARTED).read_text().strip() if (path / STARTED).exists() else None


def _record_fingerprint(path: Path, fingerprint: str) -> None:
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
        (path / STARTED).write_text(fingerprint + "\n")
    dist.barrier()


def _forget_stage(path: Path) -> None:
    """Remove a stage folder written under another configuration (rank 0; every rank waits for it)."""
    if dist.get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
    dist.barrier()


def _save_final(model: torch.nn.Module, path: Path, meta: dict) -> None:
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
        # save_model keeps one name per shared tensor: an LLM with tied embeddings (Gemma, Qwen2-0.5B, SmolLM2)
        # holds its input embedding and lm_head as one tensor, which save_file refuses.
        save_model(model, str(path / FINAL))
        (path / "final.json").write_text(json.dumps(meta, indent=2) + "\n")
    dist.barrier()


def _load_final(model: torch.nn.Module, path: Path) -> None:
    meta = json.loads((path / "final.json").read_text())
    if meta.get("lora") and not has_lora(model):
        apply_lora(model, **meta["lora"])
    elif not meta.get("lora") and has_lora(model):
        merge_lora(model)  # the stage saved merged weights: make the same transition training made
    missing, unexpected = load_model(model, str(path / FINAL), strict=False)  # restores the tied names too
    if missing or unexpected:
        raise RuntimeError(
            f"{path / FINAL}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def load_stage_weights(m: Manifest, index: int, model: torch.nn.Module, run: str | None = None) -> None:
    """Load stage `index`'s final weights into a freshly built `model`, LoRA kept or merged as the stage left it."""
    _load_final(model, checkpoint.checkpoint_dir(run_dir(m, run=run), index, m.stages[index].name))


def default_threads(workers: int, cores: int | None = None) -> int:
    """Intra-op threads for a lone CPU process: the cores its loader workers leave free, at least one.

    torch's default (one thread per core) makes the trainer's threads wait at barriers for cores the workers hold,
    several times slower per step on a busy machine than one thread. torchrun already sets
    OMP_NUM_THREADS=1 per rank; an explicit OMP_NUM_THREADS always wins.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - workers)


def train(
    m: Manifest,
    stages: list[int],
    *,
    out: str | None = None,
    run: str | None = None,
    resume: bool = False,
    workers: int = 2,
    report_to: list[str] | None = None,
) -> RunReport:
    runs = run_dir(m, out, run)
    rank, world = init_distributed()
    if world == 1 and not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(default_threads(workers))
    out = out or m.output
    torch.manual_seed(m.seed)
    tokenizer = load_tokenizer(m.model.tokenizer_path())
    model = build_vlm(m.model, tokenizer, image_size=m.stages[stages[0]].image_size)
    report = RunReport()
    if rank == 0:  # the step loggers (train.report): `report_to` of the manifest, or --report-to
        loggers.open_reporters(runs, report_to or m.report_to, loggers.run_config(m, stages, out), m.name)
    progress.start_launch(m, stages, out)  # the stage bars' ETA over the whole run (train.progress)
    if stages[0] > 0:
        prev = checkpoint.checkpoint_dir(runs, stages[0] - 1, m.stages[stages[0] - 1].name)
        if not (prev / FINAL).exists():
            raise FileNotFoundError(f"{prev / FINAL}: stage {stages[0]} starts from stage {stages[0] - 1}'s weights")
        _load_final(model, prev)
    for i in stages:
        stage = m.stages[i]
        sdir = checkpoint.checkpoint_dir(runs, i, stage.name)
        fingerprint, recorded = stage_fingerprint(m, i, out), _recorded_fingerprint(sdir)
        if resume and (sdir / FINAL).exists() and recorded == fingerprint:
            _load_final(model, sdir)
            report.stages[stage.name] = {"skipped": "finished in an earlier run"}
            continue
        # Started or finished under another configuration: train it again from its first step, its old checkpoints
        # gone (they hold other shapes or another schedule, and a later --resume must not pick them up).
        fresh = resume and recorded not in (None, fingerprint)
        if fresh:
            _forget_stage(sdir)
        _record_fingerprint(sdir, fingerprint)
        if has_lora(model) and "lora" not in stage.trains:
            merge_lora(model)  # a stage without LoRA trains or freezes the merged weights
        loader = StageLoader(out, stage.name, rank=rank, world_size=world, num_workers=workers, tokenizer=tokenizer)
        run = StageRun.resolve(m, i, loader.contract, runs, resume=resume and not fresh)
        result: StageResult = run_stage(model, run, loader)
        lora = stage.lora.model_dump(include={"r", "alpha", "dropout", "target_modules"}) if stage.lora else None
        if stage.lora and stage.lora.merge_at_end and has_lora(model):
            merge_lora(model)
            lora = None
        _save_final(
            model, sdir, {"stage": stage.name, "lora": lora if has_lora(model) else None, "fingerprint": fingerprint}
        )
        after_stage(m, model, tokenizer, i, runs, result.steps_done)  # the manifest's eval: benchmarks, if any
        resume = resume and not fresh  # later stages built on retrained weights must not reuse old ones
        report.stages[stage.name] = {
            "steps": result.steps_done,
            "first_loss": result.losses[0] if result.losses else None,
            "last_loss": result.losses[-1] if result.losses else None,
            "loader": loader.stats,
        }
    if stages[-1] == len(m.stages) - 1 and rank == 0:
        last = StageContract.read(out, m.stages[-1].name)
        report.export = str(export(model, tokenizer, runs / "export", last))
    loggers.close()
    return report


def export(model: torch.nn.Module, tokenizer: object, folder: Path, last: StageContract, format: str = "hf") -> Path:
    """The export after the last stage, as its contract fed the model (`write_export`: 🤗-native Llava if it fits)."""
    write_export(
        model,
        tokenizer,
        folder,
        image_size=last.image_size,
        template=last.template,
        mean_std=last.mean_std,
        format=format,
        image_preprocess=last.image_preprocess,
    )
    return folder
