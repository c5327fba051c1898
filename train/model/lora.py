"""LoRA on the VLM's LLM through peft, with per-architecture default target modules, and merging it back.

`get_peft_model` freezes every base parameter of the LLM; which parameters train in a stage is decided afterwards
by the stage's freezing rules, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from train.model.vlm import TinyVLM

_LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Keyed by 🤗 model_type: every linear layer of attention and MLP, as QLoRA / TinyLLaVA do.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE,
    "gemma2": _LLAMA_STYLE,
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "stablelm": _LLAMA_STYLE,
}

# GPT-2 stores its linear layers as Conv1D with transposed weights.
_FAN_IN_FAN_OUT = {"gpt2"}


def default_target_modules(model_type: str) -> list[str]:
    """LoRA target module names for a 🤗 `model_type`; unknown types must name their targets explicitly."""
    try:
        return list(DEFAULT_TARGETS[model_type])
    except KeyError:
        raise ValueError(
            f"lora.target_modules: no default for model_type {model_type!r} (known: {sorted(DEFAULT_TARGETS)}); "
            "list the target modules in the manifest"
        ) from None


def has_lora(vlm: TinyVLM) -> bool:
    return isinstance(vlm.llm, PeftModel)


def apply_lora(
    vlm: TinyVLM, r: int, alpha: float, dropout: float, target_modules: Sequence[str] | None = None
) -> TinyVLM:
    """Wrap `vlm.llm` with LoRA adapters (in place; the VLM is returned for chaining)."""
    if has_lora(vlm):
        raise ValueError("apply_lora: the LLM already carries LoRA adapters; merge them first (merge_lora)")
    model_type = vlm.llm.config.model_type
    targets = list(target_modules) if target_modules else default_target_modules(model_type)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=model_type in _FAN_IN_FAN_OUT,
        task_type=TaskType.CAUSAL_LM,
    )
    vlm.llm = get_peft_model(vlm.llm, config)
    return vlm


def merge_lora(vlm: TinyVLM) -> TinyVLM:
    """Fold the adapters into the base weights and drop peft's wrapper (in place); a no-op without LoRA."""
    if has_lora(vlm):
        vlm.llm = vlm.llm.merge_and_unload()
    return vlm
