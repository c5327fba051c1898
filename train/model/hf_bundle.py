"""The VLM as a remote-code bundle: `hf_remote/modeling_tinymix_vlm.py` plus tinymix's own weight names.

`to_bundle` builds that file's model around copies of the weights; `save_pretrained` then copies the file next to
the weights and writes `auto_map`, so `AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)`
loads it with no tinymix installed.
"""

from __future__ import annotations

import copy

from train.model.hf_remote.modeling_tinymix_vlm import TinymixVLMConfig, TinymixVLMForConditionalGeneration
from train.model.tinygpt import has_post_attn_norms
from train.model.vlm import TinyVLM

TinymixVLMConfig.register_for_auto_class()
TinymixVLMForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")


def bundle_config(vlm: TinyVLM, image_size: int) -> TinymixVLMConfig:
    """The bundle's config: the tower's and the LLM's own configs and how the connector joins them."""
    text_config = copy.deepcopy(vlm.llm.config)
    return TinymixVLMConfig(
        vision_config=vlm.vision.model.config.to_dict(),
        text_config=text_config.to_dict(),
        connector=vlm.connector.spec.to_dict(),
        vision_feature_layer=vlm.vision.feature_layer,
        drop_cls=vlm.vision.drop_cls,
        image_token_id=vlm.image_token_id,
        image_seq_length=vlm.n_image_tokens(image_size),
        post_attn_norm=has_post_attn_norms(vlm.llm),
        fp32_norms=has_post_attn_norms(vlm.llm) or bool(getattr(vlm.llm.config, "qk_layernorm", False)),
        tie_word_embeddings=bool(getattr(vlm.llm.config, "tie_word_embeddings", False)),
    )


def to_bundle(vlm: TinyVLM, image_size: int) -> TinymixVLMForConditionalGeneration:
    """The remote-code model holding copies of the weights (LoRA must be merged first)."""
    model = TinymixVLMForConditionalGeneration(bundle_config(vlm, image_size))
    dtype = vlm.vision.dtype
    model.to(dtype)
    if model.config.fp32_norms:
        for name in model._keep_in_fp32_modules_strict:
            model.get_submodule(name).float()
    missing, unexpected = model.load_state_dict(vlm.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"remote-code bundle: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
