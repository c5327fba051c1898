"""The DeepSpeed engine of one stage: accelerator choice, the DeepSpeed config, and `deepspeed.initialize`.

DeepSpeed picks its accelerator when it is first imported, so nothing here imports it at module level:
`import_deepspeed` sets `DS_ACCELERATOR=cpu` on a machine without CUDA first (and corrects an accelerator chosen by
an earlier import), then imports it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mixer.manifest.runtime import DeepSpeedSettings
from mixer.manifest.stages import StageConfig
from train.launch import loopback_interface
from train.optim import build_optimizer, param_groups
from train.schedule import stage_schedule


def accelerator_name() -> str:
    """`cuda` when torch sees a GPU, else `cpu` (DeepSpeed's CPU accelerator: gloo, fp32 / bf16)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def extensions_dir() -> Path:
    """Where DeepSpeed's JIT-built ops go: one folder per Python environment (`sys.prefix`).

    torch's default, one shared `~/.cache/torch_extensions`, makes two virtual environments (a checkout and its CI
    clone, say) rebuild `deepspeed_shm_comm` for each other on every process start — their build commands differ
    in the include paths — which costs minutes per process on a small CPU machine.
    """
    tag = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tinymix" / "torch_extensions" / tag


def import_deepspeed() -> ModuleType:
    """`deepspeed`, imported with the accelerator of this machine (an explicit `DS_ACCELERATOR` is respected).

    JIT-built ops go to `extensions_dir()` unless `TORCH_EXTENSIONS_DIR` is set.
    """
    os.environ.setdefault("DS_ACCELERATOR", accelerator_name())
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
    # DeepSpeed's ZeRO collectives still call the torch names deprecated in 2.13, once per step each.
    warnings.filterwarnings("ignore", r"`torch\.distributed\.(reduce_scatter|all_gather_into)_tensor`", FutureWarning)
    import deepspeed
    from deepspeed.accelerator import get_accelerator, set_accelerator

    wanted = os.environ["DS_ACCELERATOR"]
    if wanted == "cpu" and get_accelerator().device_name() != "cpu":
        # deepspeed was imported earlier without DS_ACCELERATOR and guessed another accelerator.
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())
    return deepspeed


def init_distributed() -> tuple[int, int]:
    """Join the launcher's process group, or make this process rank 0 of 1 when it was started without a launcher.

    A lone process gets an in-memory store: no TCP server is opened (torch's TCPStore would listen on every
    interface).
    """
    deepspeed = import_deepspeed()
    if not dist.is_initialized() and "RANK" not in os.environ:
        from deepspeed.accelerator import get_accelerator

        backend = get_accelerator().communication_backend_name()
        if (lo := loopback_interface()) is not None:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", lo)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
    return dist.get_rank(), dist.get_world_size()


def grad_accum_steps(global_batch: int, micro_batch: int, world_size: int, where: str = "stage") -> int:
    """Micro batches per optimizer step at each rank: global_batch / (micro_batch × world_size), exactly."""
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        raise ValueError(
            f"{where}: global_batch {global_batch} is not divisible by micro_batch {micro_batch} × world size "
            f"{world_size} = {per_pass}; choose a global_batch that is a multiple of {per_pass}"
        )
    return global_batch // per_pass


def zero_section(ds: DeepSpeedSettings) -> dict[str, Any]:
    """The `zero_optimization` block: stage and optional CPU offload of optimizer state / parameters."""
    section: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        section["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param:
        section["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return section


def ds_config(ds: DeepSpeedSettings, stage: StageConfig, world_size: int, where: str = "stage") -> dict[str, Any]:
    """The DeepSpeed config dict of a stage; with `ds.config` the user's JSON wins key by key (see `merge_user`)."""
    assert stage.global_batch is not None  # the stage validator derives it
    config: dict[str, Any] = {
        "train_batch_size": stage.global_batch,
        "train_micro_batch_size_per_gpu": stage.micro_batch,
        "gradient_accumulation_steps": grad_accum_steps(stage.global_batch, stage.micro_batch, world_size, where),
        "gradient_clipping": stage.optimizer.grad_clip or 0.0,
        "bf16": {"enabled": ds.bf16},
        "zero_optimization": zero_section(ds),
        # Our AdamW carries the parameter groups; ZeRO wraps it (it is plain torch AdamW, tested upstream as such).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if ds.config is not None:
        config = merge_user(config, load_user_config(ds.config))
    return config


def load_user_config(path: str) -> dict[str, Any]:
    """A DeepSpeed JSON file, with a clear error naming the file when it is missing or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"deepspeed.config: no such file {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"deepspeed.config: {path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"deepspeed.config: {path}: expected a JSON object, got {type(data).__name__}")
    return data


def merge_user(ours: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """`ours` overlaid with `user`, recursively; a user value of "auto" (🤗 Trainer's convention) keeps ours."""
    merged = copy.deepcopy(ours)
    for key, value in user.items():
        if value == "auto" and key in merged:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_user(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _checkpointing(module: nn.Module, on: bool) -> None:
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_* (old names deprecated until v6).
    new = hasattr(module, "activation_checkpointing_enable")
    if not on:
        (module.activation_checkpointing_disable if new else module.gradient_checkpointing_disable)()
        return
    kwargs = {"use_reentrant": False}  # non-reentrant: frozen inputs need no requires_grad trick
    if new:
        module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def enable_checkpointing(model: nn.Module, llm: bool, vision: bool) -> None:
    """Switch 🤗 gradient (activation) checkpointing on or off for the LLM and the vision tower."""
    _checkpointing(model.llm, llm)
    _checkpointing(model.vision.model, vision)


def offloads_optimizer(config: dict[str, Any]) -> bool:
    """Whether a DeepSpeed config keeps optimizer state off the accelerator (ZeRO-Offload to CPU or NVMe)."""
    offload = config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def make_optimizer(model: nn.Module, stage: StageConfig, connector_lr: float | None, offload: bool) -> Any:
    """AdamW over the stage's parameter groups; DeepSpeed's CPU Adam (a JIT-built op) when offloading the optimizer."""
    groups = param_groups(model, stage, connector_lr)
    if not offload:
        return build_optimizer(groups, stage)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    opt = stage.optimizer
    return DeepSpeedCPUAdam(groups, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, adamw_mode=True)


def build_engine(
    model: nn.Module,
    stage: StageConfig,
    ds: DeepSpeedSettings,
    steps: int,
    *,
    stage_index: int = 0,
    connector_lr: float | None = None,
    vision_checkpointing: bool = False,
    load_universal: bool = False,
) -> Any:
    """`deepspeed.initialize` for a model whose freezing is already applied; returns the DeepSpeed engine.

    The engine owns the optimizer (AdamW groups, or the user's JSON `optimizer`) and the per-step schedule (a
    `LambdaLR` built on DeepSpeed's wrapped optimizer, or the user's JSON `scheduler`). `load_universal`: it will
    load a universal checkpoint (one written by another number of ranks, see `train.checkpoint`).
    """
    _, world_size = init_distributed()
    deepspeed = import_deepspeed()
    config = ds_config(ds, stage, world_size, where=f"stages[{stage_index}]")
    if load_universal:
        config.setdefault("checkpoint", {})["load_universal"] = True
    enable_checkpointing(model, llm=ds.gradient_checkpointing, vision=vision_checkpointing)
    optimizer = None
    if "optimizer" not in config:
        optimizer = make_optimizer(model, stage, connector_lr, offloads_optimizer(config))
    schedule = stage_schedule(stage, steps)
    scheduler = None if "scheduler" in config else (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=param_groups(model, stage, connector_lr) if optimizer is None else None,
        lr_scheduler=scheduler,
        config=config,
    )
    return engine
