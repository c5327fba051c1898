"""Weight-only int8 for an exported model: torchao on the CPU, bitsandbytes' LLM.int8 where a GPU is present.

Weight-only: every plain `nn.Linear` keeps int8 weights with a per-channel scale and computes in the activations'
dtype, so memory for the weights drops to about a quarter of fp32 while activations (and the vision tower's
convolution, norms and embeddings) stay as they are. `nn.MultiheadAttention`'s output projection (the resampler) is
left alone: attention reads its weight directly, not through the layer's forward.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn


def int8_backend(cuda: bool, bnb_installed: bool, torchao_installed: bool) -> str:
    """`bitsandbytes` on a GPU where installed, else `torchao`; a missing backend is a clear error."""
    if cuda and bnb_installed:
        return "bitsandbytes"
    if torchao_installed:
        return "torchao"
    raise ValueError("--int8 needs torchao (pip install 'tinymix[quant]') or, on a GPU, bitsandbytes")


def backend_here() -> str:
    """`int8_backend` for this machine."""
    return int8_backend(
        torch.cuda.is_available(),
        importlib.util.find_spec("bitsandbytes") is not None,
        importlib.util.find_spec("torchao") is not None,
    )


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantise the plain Linear layers' weights to int8 in place with torchao (CPU or GPU)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, _: type(module) is nn.Linear)
    return model


def bnb_load_kwargs() -> dict[str, Any]:
    """`from_pretrained` arguments for bitsandbytes' 8-bit weights (GPU only)."""
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": "auto"}


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers occupy (int8 tensors count their int8 data and scales)."""
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        inner = [getattr(t, name) for name in getattr(t, "__tensor_flatten__", lambda: ([], None))()[0]]
        total += sum(x.numel() * x.element_size() for x in inner) if inner else t.numel() * t.element_size()
    return total


def export_bytes(export: str | Path) -> int:
    """Size of an export folder's weight files."""
    return sum(p.stat().st_size for p in Path(export).glob("*.safetensors"))
