"""Stage freezing: a stage's `trains` list (connector, vision, llm, lora, norms) decides which parameters learn.

Each name selects parameters of the `TinyVLM` through one table; everything not selected is frozen. `lora` selects
the peft adapters (the LLM must already carry them, see `ensure_lora`); `norms` the LLM's norms (TinyGPT-V trains
them with the connector); `llm` the LLM's base weights. A stage's `vision_from: k` narrows `vision` to the tower's
encoder layers k, k+1, … (TinyLLaVA's share recipe: `tune_vision_tower_from_layer 12`); its embeddings, the layers
before k and the norms around the encoder stay frozen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from mixer.manifest.stages import StageConfig
from train.model.lora import apply_lora, has_lora
from train.model.tinygpt import norm_parameters

Named = Iterator[tuple[str, nn.Parameter]]


def _part(model: nn.Module, name: str) -> nn.Module:
    part = getattr(model, name, None)
    if not isinstance(part, nn.Module):
        raise ValueError(f"trains: {name!r} needs a model with a `{name}` module (a TinyVLM): {type(model).__name__}")
    return part


def _connector(model: nn.Module) -> Named:
    yield from _part(model, "connector").named_parameters()


def _vision(model: nn.Module) -> Named:
    yield from _part(model, "vision").named_parameters()


_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.")  # 🤗 CLIP / SigLIP encoder.layers.i, timm blocks.i


def vision_layer(name: str) -> int | None:
    """The encoder layer a vision tower parameter belongs to (None for embeddings, norms and heads)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def vision_from(model: nn.Module, first: int, where: str = "vision_from") -> list[nn.Parameter]:
    """The tower's parameters in encoder layers `first` and after; a `first` past the last layer is an error."""
    named = list(_vision(model))
    layers = {vision_layer(n) for n, _ in named} - {None}
    if not layers or first > max(layers):  # type: ignore[type-var]
        raise ValueError(f"{where}: {first} is past the vision tower's last layer ({max(layers, default=-1)})")
    return [p for n, p in named if (layer := vision_layer(n)) is not None and layer >= first]


def _llm(model: nn.Module) -> Named:
    yield from ((n, p) for n, p in _part(model, "llm").named_parameters() if "lora_" not in n)


def _lora(model: nn.Module) -> Named:
    yield from ((n, p) for n, p in _part(model, "llm").named_parameters() if "lora_" in n)


def _norms(model: nn.Module) -> Named:
    yield from norm_parameters(_part(model, "llm"))


SELECTORS: dict[str, Callable[[nn.Module], Named]] = {
    "connector": _connector,
    "vision": _vision,
    "llm": _llm,
    "lora": _lora,
    "norms": _norms,
}


@dataclass(frozen=True)
class FreezeReport:
    """Parameter counts after freezing: per `trains` entry, and trainable / total over the whole model."""

    per_module: dict[str, int]
    trainable: int
    total: int

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v:,}" for k, v in self.per_module.items())
        return f"trainable {self.trainable:,} of {self.total:,} parameters ({parts})"


def select(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters one `trains` entry selects; unknown names are rejected with the known ones."""
    try:
        selector = SELECTORS[name]
    except KeyError:
        raise ValueError(f"trains: unknown module {name!r}; known: {', '.join(SELECTORS)}") from None
    return [p for _, p in selector(model)]


def apply_freeze(model: nn.Module, trains: list[str], where: str = "trains") -> FreezeReport:
    """Freeze every parameter, then unfreeze those that `trains` selects. An entry selecting nothing is an error."""
    chosen = {name: select(model, name) for name in trains}
    empty = [name for name, params in chosen.items() if not params]
    if empty:
        hint = " (apply LoRA first: ensure_lora)" if "lora" in empty else ""
        raise ValueError(f"{where}: {', '.join(empty)} selects no parameter in this model{hint}")
    for p in model.parameters():
        p.requires_grad_(False)
    for params in chosen.values():
        for p in params:
            p.requires_grad_(True)
    return FreezeReport(
        per_module={name: sum(p.numel() for p in params) for name, params in chosen.items()},
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()),
    )


def ensure_lora(model: nn.Module, stage: StageConfig) -> bool:
    """Give the LLM the stage's LoRA adapters when it trains `lora` and has none yet; True when they were added."""
    if "lora" not in stage.trains or has_lora(model):
        return False
    assert stage.lora is not None  # the stage validator fills the defaults when trains has lora
    lora = stage.lora
    apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    return True


def freeze_stage(model: nn.Module, stage: StageConfig, stage_index: int) -> FreezeReport:
    """`ensure_lora`, `apply_freeze` with the stage's `trains` (errors name `stages[i].trains`), then `vision_from`.

    With `vision_from`, only the tower's encoder layers from that index on keep training.
    """
    ensure_lora(model, stage)
    report = apply_freeze(model, stage.trains, where=f"stages[{stage_index}].trains")
    if stage.vision_from is None:
        return report
    keep = {id(p) for p in vision_from(model, stage.vision_from, where=f"stages[{stage_index}].vision_from")}
    for _, p in _vision(model):
        p.requires_grad_(id(p) in keep)
    per_module = {**report.per_module, "vision": sum(p.numel() for _, p in _vision(model) if p.requires_grad)}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FreezeReport(per_module=per_module, trainable=trainable, total=report.total)
