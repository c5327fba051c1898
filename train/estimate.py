"""`train estimate`: parameters per stage (total and trainable) and DeepSpeed's ZeRO memory estimates.

DeepSpeed's estimators assume every parameter trains; a stage trains only some. So the estimates here are DeepSpeed's
`estimate_zero{2,3}_model_states_mem_needs` for the *trainable* parameters (bf16 weights + gradients + fp32 master
weights and Adam states), plus 2 bytes per frozen parameter (its bf16 copy on every device). Activations are not
included: they depend on seq_len, micro batch and gradient checkpointing.
"""

from __future__ import annotations

import torch

from mixer.manifest import Manifest
from mixer.tokenizer import load_tokenizer
from train.engine import import_deepspeed
from train.freeze import freeze_stage
from train.model import build_vlm

GIB = 1024**3
WIDTHS = (16, 14, 16, 14)


def _mem(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _largest_layer(model: torch.nn.Module) -> int:
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


def stage_params(m: Manifest) -> tuple[list[tuple[str, int, int]], int]:
    """(stage, total, trainable) parameters per stage, and the parameter count of the largest layer (ZeRO-3).

    Stages are applied in order, so LoRA adapters appear where a stage adds them.
    """
    torch.manual_seed(m.seed)
    model = build_vlm(m.model, load_tokenizer(m.model.tokenizer_path()), image_size=m.stages[0].image_size)
    rows = []
    for i, stage in enumerate(m.stages):
        freeze_stage(model, stage, i)
        total = sum(p.numel() for p in model.parameters())
        rows.append((stage.name, total, sum(p.numel() for p in model.parameters() if p.requires_grad)))
    return rows, _largest_layer(model)


def estimate_manifest(m: Manifest, gpus_per_node: int = 1, nodes: int = 1) -> str:
    import_deepspeed()
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    rows, largest = stage_params(m)
    offload = m.deepspeed.offload_optimizer
    lines = [
        f"{m.name}: model states per device, {nodes} node(s) x {gpus_per_node} device(s); activations not included",
        f"{'stage':<14}{'params':>14}{'trainable':>14}{'ZeRO-2 device':>16}{'ZeRO-2 host':>14}"
        f"{'ZeRO-3 device':>16}{'ZeRO-3 host':>14}",
    ]
    for name, total, trainable in rows:
        frozen = 2 * (total - trainable)
        cpu2, dev2 = estimate_zero2_model_states_mem_needs(trainable, gpus_per_node, nodes, cpu_offload=offload)
        cpu3, dev3, _ = estimate_zero3_model_states_mem_needs(
            trainable, largest, gpus_per_node, nodes, cpu_offload=offload, cpu_offload_params=m.deepspeed.offload_param
        )
        mems = (dev2 + frozen, cpu2, dev3 + frozen, cpu3)
        lines.append(
            f"{name:<14}{total:>14,}{trainable:>14,}"
            + "".join(f"{_mem(b):>{w}}" for b, w in zip(mems, WIDTHS, strict=True))
        )
    return "\n".join(lines)
