"""Stage checkpoints: DeepSpeed state (model, optimizer, scheduler) plus, per rank, RNG states and the loader position.

Layout: ``RUN/checkpoints/<NN>-<stage>/step<0000007>/`` holds DeepSpeed's files and one ``client_rank<r>.pt`` per
rank (each rank has its own RNG streams and loader position). The rank files are written before DeepSpeed's
``latest`` pointer moves, so ``latest`` only ever names a complete checkpoint; older ones beyond ``keep_last`` go.

Another number of ranks may resume a checkpoint when the global batch (micro batch × accumulation × ranks) is
unchanged: checkpoints sit at step boundaries, where the loader's position is the same global batch for any split.
ZeRO-1/2 partition the optimizer state by rank, so rank 0 first converts the checkpoint once into DeepSpeed's universal
format (``deepspeed.checkpoint.ds_to_universal``, into ``step<…>/universal/``) and the engine, built with
``checkpoint.load_universal``, re-partitions it for the new ranks. This costs nothing while training, unlike
gathering the whole optimizer state at every checkpoint (ZeRO-3 is refused: see `needs_universal`). A rank
without a file of its own takes rank 0's RNG states.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

_STEP_DIR = re.compile(r"^step(\d+)$")


def stage_dir(run_dir: str | Path, stage_index: int, stage_name: str) -> Path:
    """Folder holding one stage's checkpoints."""
    return Path(run_dir) / "checkpoints" / f"{stage_index:02d}-{stage_name}"


def step_tag(step: int) -> str:
    return f"step{step:07d}"


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (and CUDA, where present) RNG states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class ResumePoint:
    """Where a stage resumes: the optimizer steps already done, and the checkpoint they came from."""

    step: int
    path: Path


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def saved_steps(ckpt_dir: Path) -> list[int]:
    """Steps of the checkpoints in a stage folder, ascending."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())


def prune(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints of a stage; returns the deleted folders."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (got {keep_last})")
    doomed = [ckpt_dir / step_tag(s) for s in saved_steps(ckpt_dir)[:-keep_last]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def save(engine: Any, ckpt_dir: Path, step: int, *, stage_index: int, loader_state: dict, keep_last: int) -> Path:
    """Checkpoint after `step` optimizer steps (collective: every rank calls it); returns the checkpoint folder."""
    tag = step_tag(step)
    path = ckpt_dir / tag
    path.mkdir(parents=True, exist_ok=True)
    world = dist.get_world_size() if dist.is_initialized() else 1
    client = {
        "stage_index": stage_index,
        "step": step,
        "world_size": world,
        "global_batch": engine.train_batch_size(),
        "rng": rng_state(),
        "loader": loader_state,
    }
    torch.save(client, path / f"client_rank{_rank()}.pt")
    _barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"stage_index": stage_index, "step": step})
    _barrier()
    if _rank() == 0:
        prune(ckpt_dir, keep_last)
    _barrier()
    return path


def latest(ckpt_dir: Path) -> Path | None:
    """The checkpoint folder DeepSpeed's ``latest`` names, or None when the stage has none."""
    pointer = ckpt_dir / "latest"
    return ckpt_dir / pointer.read_text().strip() if pointer.is_file() else None


def _client(path: Path, rank: int = 0) -> dict:
    return torch.load(path / f"client_rank{rank}.pt", weights_only=False)  # ours: RNG tuples, the loader's state


def _saved_global_batch(client: dict) -> int | None:
    return client.get("global_batch") or (client.get("loader") or {}).get("global_batch")


def global_batch_problem(ckpt_dir: Path, global_batch: int) -> str | None:
    """Why the latest checkpoint of a stage cannot resume with `global_batch`, or None when it can (or is absent)."""
    path = latest(ckpt_dir)
    if path is None or not (path / "client_rank0.pt").is_file():
        return None
    saved = _saved_global_batch(_client(path))
    if saved is None or int(saved) == int(global_batch):
        return None
    return (
        f"{path}: written with global batch {saved}, this run has {global_batch} (micro batch × accumulation × "
        f"ranks); resume with global batch {saved}"
    )


def resume_problem(run_dir: str | Path, stages: list[tuple[int, Any]]) -> str | None:
    """The first of `stages` (index, StageConfig) whose latest checkpoint another global batch wrote, as a message."""
    for index, stage in stages:
        problem = global_batch_problem(stage_dir(run_dir, index, stage.name), stage.global_batch)
        if problem:
            return problem
    return None


def needs_universal(ckpt_dir: Path, world: int) -> bool:
    """Whether resuming the stage on `world` ranks needs DeepSpeed's universal checkpoint (set before the engine).

    True when the latest checkpoint was written by another number of ranks and holds partitioned optimizer state
    (ZeRO 1-2 or DeepSpeed's bf16 optimizer); a ZeRO-0 fp32 optimizer is saved whole and loads on any count.
    ZeRO-3 (one model-states file per rank) is refused: resumed through DeepSpeed 0.19.8's universal checkpoint, its
    second step after the resume missed the uninterrupted run's loss by 4e-4 where ZeRO-2 matched bit for bit.
    """
    path = latest(ckpt_dir)
    if path is None or not (path / "client_rank0.pt").is_file():
        return False
    saved = _client(path)["world_size"]
    if saved == world:
        return False
    if any(path.glob("zero_pp_rank_*_model_states.pt")):
        raise ValueError(
            f"{path}: a ZeRO-3 checkpoint of {saved} ranks resumes on {saved} ranks only (this run: {world})"
        )
    return any(path.glob("*optim_states.pt"))


def to_universal(path: Path) -> Path:
    """DeepSpeed's universal checkpoint of `path` in ``path/universal`` (rank 0 converts once; collective)."""
    out = path / "universal"
    if _rank() == 0 and not (out / "done").is_file():
        from argparse import Namespace

        from deepspeed.checkpoint import ds_to_universal

        shutil.rmtree(out, ignore_errors=True)  # a conversion cut short
        # One worker: the conversion runs beside the ranks' loaders; tiny and LAION-size shards alike are I/O bound.
        args = Namespace(
            input_folder=str(path),
            output_folder=str(out),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # we save no Megatron-style UNIVERSAL_CHECKPOINT_INFO: plain data parallel
        )
        ds_to_universal.main(args)
        (out / "done").write_text("")
    _barrier()
    return out


def load(engine: Any, ckpt_dir: Path, loader: Any, stage_index: int) -> ResumePoint | None:
    """Restore the latest checkpoint of a stage into `engine`, `loader` and the RNGs; None when there is none.

    On another number of ranks than wrote it, the global batch must be the same (see the module doc).
    """
    path = latest(ckpt_dir)
    if path is None:
        return None
    rank, world = _rank(), dist.get_world_size() if dist.is_initialized() else 1
    if not (path / "client_rank0.pt").is_file():
        raise ValueError(f"{path}: no client_rank0.pt: not a checkpoint of this trainer")
    client = _client(path, rank if (path / f"client_rank{rank}.pt").is_file() else 0)
    if client["stage_index"] != stage_index:
        raise ValueError(f"{path}: a checkpoint of stage index {client['stage_index']}, not of stage {stage_index}")
    problem = global_batch_problem(ckpt_dir, engine.train_batch_size())
    if problem:
        raise ValueError(problem)
    if needs_universal(ckpt_dir, world):
        if not engine.load_universal_checkpoint():
            raise RuntimeError(f"{path}: written by {client['world_size']} ranks: build the engine with load_universal")
        loaded, _ = engine.load_checkpoint(str(to_universal(path).parent), tag="universal")
    else:
        loaded, _ = engine.load_checkpoint(str(ckpt_dir), tag=path.name)
    if loaded is None:
        raise ValueError(f"{path}: DeepSpeed could not load this checkpoint")
    loader.load_state_dict(client["loader"])
    set_rng_state(client["rng"])
    return ResumePoint(step=int(client["step"]), path=path)


def param_attrs(model: torch.nn.Module) -> dict[int, set[str]]:
    """Attribute names each parameter carries before DeepSpeed decorates it (ZeRO-3 adds `ds_*` and methods)."""
    return {id(p): set(vars(p)) for p in model.parameters()}


def _full_fp32(p: torch.nn.Parameter) -> torch.Tensor:
    """The whole fp32 value of one parameter under any ZeRO stage (collective under ZeRO: every rank calls it)."""
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_fp32_param

    if p.requires_grad:
        master = safe_get_full_fp32_param(p)  # the optimizer's fp32 copy; None when the module holds it itself
        if master is not None:
            return master.detach().clone().float()
    if hasattr(p, "ds_id"):  # a ZeRO-3 partition: gather the whole tensor
        with zero.GatheredParameters([p]):
            return p.detach().clone().float()
    return p.detach().clone().float()


def release(engine: Any, model: torch.nn.Module, plain: dict[int, set[str]]) -> None:
    """After a stage: leave `model` a plain fp32 module holding the engine's fp32 master weights.

    bf16 training leaves bf16 copies in the module and ZeRO-3 leaves empty partitions; the next stage and the export
    start from the full-precision weights instead. Frozen parameters come back as they were trained with (bf16
    training rounded them once). `plain` is `param_attrs` taken before the engine decorated the parameters.
    """
    full = {name: _full_fp32(p) for name, p in model.named_parameters()}
    engine.destroy()
    for name, p in model.named_parameters():
        p.data = full[name].to(p.device)
        for attr in set(vars(p)) - plain.get(id(p), set()):
            delattr(p, attr)
    model.float()
