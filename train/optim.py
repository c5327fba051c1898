"""AdamW parameter groups for a stage: connector and vision tower may have their own lr; norms, biases never decay.

Only parameters that train (``requires_grad``) enter a group, so freezing must be applied first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mixer.manifest.stages import StageConfig
from train.model.tinygpt import is_norm


@dataclass(frozen=True)
class GroupKey:
    """Which group a parameter belongs to: `model`, `connector` or `vision` (own lr), decayed or not."""

    part: str
    decay: bool

    @property
    def name(self) -> str:
        return f"{self.part}_{'decay' if self.decay else 'no_decay'}"


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that never decay: every parameter of a norm module, every bias, every 0-d / 1-d tensor."""
    names = set()
    for prefix, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if is_norm(module) or pname == "bias" or p.ndim < 2:
                names.add(f"{prefix}.{pname}" if prefix else pname)
    return names


def connector_names(model: nn.Module) -> set[str]:
    """Names of the connector's parameters (a model without a `connector` attribute has none)."""
    connector = getattr(model, "connector", None)
    if not isinstance(connector, nn.Module):
        return set()
    return {f"connector.{name}" for name, _ in connector.named_parameters()}


def param_groups(model: nn.Module, stage: StageConfig, connector_lr: float | None = None) -> list[dict]:
    """AdamW groups over the trainable parameters, each with its `name`, `lr` and `weight_decay`; empty groups dropped.

    `connector_lr` (the manifest's `model.connector.lr`) overrides the stage's lr for the connector's groups, and the
    stage's `vision_lr` for the vision tower's (without it the tower is part of the `model` groups).
    """
    opt = stage.optimizer
    plain, connector = no_decay_names(model), connector_names(model)
    lrs = {"model": opt.lr, "connector": connector_lr or opt.lr, "vision": stage.vision_lr or opt.lr}
    grouped: dict[GroupKey, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = "connector" if name in connector else "model"
            if stage.vision_lr is not None and name.startswith("vision."):
                part = "vision"
            grouped.setdefault(GroupKey(part, name not in plain), []).append(p)
    if not grouped:
        raise ValueError(f"stages.{stage.name}.trains: no parameter trains in this stage ({', '.join(stage.trains)})")
    order = [GroupKey(part, d) for part in ("model", "connector", "vision") for d in (True, False)]
    return [
        {
            "name": key.name,
            "params": grouped[key],
            "lr": lrs[key.part],
            "weight_decay": opt.weight_decay if key.decay else 0.0,
        }
        for key in order
        if key in grouped
    ]


def build_optimizer(groups: list[dict], stage: StageConfig) -> torch.optim.AdamW:
    """`torch.optim.AdamW` over `groups` with the stage's betas (DeepSpeed wraps it for ZeRO)."""
    opt = stage.optimizer
    return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
