"""TinyGPT-V's stabilising options for Phi-style LLMs: QK LayerNorm, a post-attention RMSNorm, norms computed in fp32.

TinyGPT-V (Phi-2 backbone) adds these so that training in reduced precision does not diverge; its first stage then
trains the connector together with the LLM's norms, so `norm_parameters` lists them for stage freezing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixer.manifest.model import LLMConfig

POST_ATTN_NORM = "post_attn_norm"


class FP32LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` that normalises in fp32 whatever the activation and parameter dtype, then casts back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class FP32RMSNorm(nn.Module):
    """RMSNorm computed in fp32. The gain starts at one, so at initialisation it keeps each token's direction."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def config_overrides(cfg: LLMConfig, config: Any) -> dict[str, Any]:
    """Config fields to set before the LLM is built (QK norm is a Phi config option: `qk_layernorm`)."""
    if not cfg.qk_norm:
        return {}
    if not hasattr(config, "qk_layernorm"):
        raise ValueError(
            f"model.llm.qk_norm: model_type {config.model_type!r} has no qk_layernorm option (Phi-style models only)"
        )
    return {"qk_layernorm": True}


def _post_attn_norm_hook(module: nn.Module, args: Any, output: Any) -> Any:
    # Attention modules return (attn_output, attn_weights); only the output is normalised.
    if isinstance(output, tuple):
        return (getattr(module, POST_ATTN_NORM)(output[0]), *output[1:])
    return getattr(module, POST_ATTN_NORM)(output)


def attention_modules(llm: nn.Module) -> list[nn.Module]:
    """The `self_attn` module of every decoder layer (🤗 decoder layers name their attention `self_attn`)."""
    return [m.self_attn for m in llm.modules() if isinstance(getattr(m, "self_attn", None), nn.Module)]


def add_post_attn_norms(llm: nn.Module) -> None:
    """Give every decoder layer's attention an RMSNorm on its output (`…self_attn.post_attn_norm.weight`)."""
    attns = attention_modules(llm)
    if not attns:
        raise ValueError("model.llm.post_attn_norm: no decoder layer with a self_attn module in this model")
    eps = float(getattr(llm.config, "layer_norm_eps", None) or getattr(llm.config, "rms_norm_eps", None) or 1e-5)
    for attn in attns:
        if hasattr(attn, POST_ATTN_NORM):
            continue
        attn.add_module(POST_ATTN_NORM, FP32RMSNorm(llm.config.hidden_size, eps))
        attn.register_forward_hook(_post_attn_norm_hook)


def has_post_attn_norms(llm: nn.Module) -> bool:
    return any(hasattr(a, POST_ATTN_NORM) for a in attention_modules(llm))


def keep_norms_fp32(llm: nn.Module) -> None:
    """Swap every `nn.LayerNorm` for `FP32LayerNorm` (same state-dict keys) and store all norm parameters in fp32."""
    for parent in list(llm.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:
                norm = FP32LayerNorm(
                    child.normalized_shape, child.eps, child.elementwise_affine, bias=child.bias is not None
                )
                norm.load_state_dict(child.state_dict())
                setattr(parent, name, norm.to(child.weight.device))
    for module in llm.modules():
        if is_norm(module):
            module.float()


def is_norm(module: nn.Module) -> bool:
    """LayerNorm and RMSNorm modules of any 🤗 architecture (LlamaRMSNorm, Qwen2RMSNorm, …) and ours."""
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")


def norm_parameters(llm: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every norm in the LLM, for stages that train "the LM norms"."""
    return [
        (f"{prefix}.{pname}" if prefix else pname, p)
        for prefix, module in llm.named_modules()
        if is_norm(module)
        for pname, p in module.named_parameters(recurse=False)
    ]


def apply_tinygpt_options(llm: nn.Module, cfg: LLMConfig) -> None:
    """After the LLM is built: post-attention RMSNorms if asked, and fp32 trainable norms when any option is on."""
    if cfg.post_attn_norm:
        add_post_attn_norms(llm)
    if cfg.qk_norm or cfg.post_attn_norm:
        keep_norms_fp32(llm)
        for _, p in norm_parameters(llm):
            p.requires_grad_(True)
