"""VLM assembly from the manifest's `model:` section: vision tower → connector → causal LM (+ TinyGPT-V options).

`build_vlm` is the one entry point; the same code loads `microsoft/phi-2` by name on a user's machine and a random
tiny model from an inline config in the tests.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from mixer.batch import IMAGE_TOKEN
from mixer.manifest.model import LLMConfig, ModelConfig
from train.model.connectors import build_connector, connector_spec
from train.model.export import load_export, save_export
from train.model.lora import apply_lora, merge_lora
from train.model.tinygpt import apply_tinygpt_options, config_overrides
from train.model.vision import build_vision
from train.model.vlm import TinyVLM, attn_implementation_here

__all__ = ["TinyVLM", "apply_lora", "build_llm", "build_vlm", "load_export", "merge_lora", "save_export"]


def build_llm(cfg: LLMConfig, vocab_size: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM by name-or-path or inline config, resized to `vocab_size`, with the TinyGPT-V options applied."""
    attn = attn_implementation_here(cfg.attn_implementation)
    if cfg.config is not None:
        options = dict(cfg.config)
        model_type = options.pop("model_type")
        options.setdefault("vocab_size", vocab_size)
        config = AutoConfig.for_model(model_type, **options)
        for key, value in config_overrides(cfg, config).items():
            setattr(config, key, value)
        llm = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    else:
        config = AutoConfig.from_pretrained(cfg.name_or_path)
        overrides = config_overrides(cfg, config)
        llm = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, dtype=dtype, attn_implementation=attn, **overrides)
    if llm.get_input_embeddings().num_embeddings != vocab_size:
        llm.resize_token_embeddings(vocab_size)
    apply_tinygpt_options(llm, cfg)
    return llm


def build_vlm(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, image_size: int, dtype: torch.dtype = torch.float32
) -> TinyVLM:
    """Assemble the VLM and check that it emits exactly the image tokens the data plan reserved per image."""
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"model.tokenizer: the tokenizer has no {IMAGE_TOKEN} token")
    vision = build_vision(cfg.vision, dtype)
    llm = build_llm(cfg.llm, len(tokenizer), dtype)
    # an inline config keeps its family's defaults (Llama: bos 1, eos 2) whatever the tokenizer says: 🤗 generate
    # would then stop on another token than the one training ended answers with
    for name in ("bos", "eos", "pad"):
        setattr(llm.config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
        setattr(llm.generation_config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    spec = connector_spec(cfg.connector, vision.hidden_size, llm.config.hidden_size)
    connector = build_connector(spec).to(dtype)
    vlm = TinyVLM(vision, connector, llm, image_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id)
    planned, emitted = cfg.image_tokens_for(image_size), vlm.n_image_tokens(image_size)
    if planned != emitted:
        raise ValueError(
            f"model: the assembled model emits {emitted} tokens per image at {image_size}px but the manifest plans "
            f"{planned} (check model.image_tokens, model.vision.patch_size / drop_cls, model.connector.num_queries)"
        )
    return vlm
