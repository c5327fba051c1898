"""The VLM as 🤗's own `LlavaForConditionalGeneration`, when it fits that class exactly, and why not when it does not.

Llava is vision tower → `hidden_states[vision_feature_layer]` (CLS dropped with strategy `default`) → a two-layer
projector (`linear_1`, act, `linear_2`) → `AutoModel(text_config)` → a bias-free `lm_head`. A tinymix model maps
onto it when:

- the tower is CLIP or SigLIP. Llava calls the tower without `interpolate_pos_encoding`, so the position table is
  interpolated here, once, to the stage's image size with the tower's own `interpolate_pos_encoding` (the very values
  tinymix computes at every forward), and `vision_config.image_size` becomes that size;
- the connector is `mlp2x_gelu` (the projector itself) or `linear`: `linear_1` is the layer, the activation is the
  identity (`projector_hidden_act: linear`) and `linear_2` the identity matrix with a zero bias — exact, since
  multiplying by 1 and adding 0 round nothing, at the cost of one `llm_dim²` matrix;
- the LLM is a plain 🤗 causal LM whose logits are `lm_head(base_model(...))` with no bias: Phi's `lm_head` has one
  (Llava's has none), TinyGPT-V's post-attention RMSNorm has no slot in any 🤗 class. `misfit` names the reason,
  and `check_parity` compares the logits of both models on one image, which catches heads that do more than a
  linear layer (logit soft-capping, scaling).
"""

from __future__ import annotations

import copy

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from train.model.tinygpt import has_post_attn_norms
from train.model.vlm import TinyVLM, image_positions

NATIVE_CONNECTORS = ("mlp2x_gelu", "linear")
_POSITIONS = "embeddings.position_embedding.weight"  # in CLIPVisionModel and SiglipVisionModel (transformers 5)


def misfit(vlm: TinyVLM) -> str | None:
    """Why the model cannot be written as `LlavaForConditionalGeneration` exactly, or None when it can."""
    kind = vlm.connector.spec.type
    if kind not in NATIVE_CONNECTORS:
        return f"the {kind} connector has no counterpart in Llava's two-layer projector"
    if has_post_attn_norms(vlm.llm):
        return "TinyGPT-V's post-attention RMSNorm has no slot in 🤗's decoder layers"
    config = vlm.llm.config
    if getattr(config, "qk_layernorm", False):
        return "TinyGPT-V's QK LayerNorm is kept in fp32, which 🤗's Phi does not do"
    head = vlm.llm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        return f"the {config.model_type} lm_head has a bias and Llava's lm_head has none"
    return None


def _position_table(tower: torch.nn.Module, image_size: int) -> torch.Tensor:
    """The tower's position embeddings at `image_size`, as its own `interpolate_pos_encoding` computes them."""
    emb = tower.get_submodule(_POSITIONS.removesuffix(".position_embedding.weight"))
    n = (image_size // tower.config.patch_size) ** 2 + (emb.position_embedding.weight.shape[0] - emb.num_patches)
    probe = emb.position_embedding.weight.new_zeros(1, n, emb.position_embedding.weight.shape[1])
    with torch.no_grad():
        return emb.interpolate_pos_encoding(probe, image_size, image_size)[0].clone()


def llava_config(vlm: TinyVLM, image_size: int) -> LlavaConfig:
    """Llava's config for the model at the stage's `image_size`."""
    vision_config = copy.deepcopy(vlm.vision.model.config)
    vision_config.image_size = image_size
    text_config = copy.deepcopy(vlm.llm.config)
    return LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=vlm.image_token_id,
        image_seq_length=vlm.n_image_tokens(image_size),
        projector_hidden_act="gelu" if vlm.connector.spec.type == "mlp2x_gelu" else "linear",
        vision_feature_select_strategy="default" if vlm.vision.drop_cls else "full",
        vision_feature_layer=vlm.vision.feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(vlm.llm.config, "tie_word_embeddings", False)),
    )


def _projector_state(vlm: TinyVLM) -> dict[str, torch.Tensor]:
    proj = vlm.connector.proj
    if vlm.connector.spec.type == "mlp2x_gelu":
        first, second = proj[0], proj[2]
        return {
            "linear_1.weight": first.weight,
            "linear_1.bias": first.bias,
            "linear_2.weight": second.weight,
            "linear_2.bias": second.bias,
        }
    dim, w = proj.weight.shape[0], proj.weight
    return {
        "linear_1.weight": w,
        "linear_1.bias": proj.bias,
        "linear_2.weight": torch.eye(dim, dtype=w.dtype, device=w.device),
        "linear_2.bias": torch.zeros(dim, dtype=w.dtype, device=w.device),
    }


def to_llava(vlm: TinyVLM, image_size: int) -> LlavaForConditionalGeneration:
    """A `LlavaForConditionalGeneration` holding copies of the model's weights (LoRA must be merged first)."""
    reason = misfit(vlm)
    if reason:
        raise ValueError(f"not expressible as LlavaForConditionalGeneration: {reason}")
    dtype = vlm.vision.dtype
    llava = LlavaForConditionalGeneration(llava_config(vlm, image_size)).to(dtype).eval()
    tower = {f"model.vision_tower.{k}": v for k, v in vlm.vision.model.state_dict().items()}
    tower[f"model.vision_tower.{_POSITIONS}"] = _position_table(vlm.vision.model, image_size)
    base = getattr(vlm.llm, vlm.llm.base_model_prefix)
    state = {
        **tower,
        **{f"model.multi_modal_projector.{k}": v for k, v in _projector_state(vlm).items()},
        **{f"model.language_model.{k}": v for k, v in base.state_dict().items()},
        "lm_head.weight": vlm.llm.get_output_embeddings().weight,
    }
    missing, unexpected = llava.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"the {vlm.llm.config.model_type} LLM does not map onto Llava's language_model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return llava


def probe_inputs(vlm: TinyVLM, image_size: int, n_text: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [1, L], pixel_values [1, 3, S, S]): a few text ids around one image's run of image tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab = vlm.llm.get_input_embeddings().num_embeddings
    text = torch.randint(0, vocab, (n_text,), generator=g)
    text[text == vlm.image_token_id] = 0
    image = torch.full((vlm.n_image_tokens(image_size),), vlm.image_token_id)
    ids = torch.cat([text[:2], image, text[2:]])[None]
    pixels = torch.randn(1, 3, image_size, image_size, generator=g)
    return ids, pixels


@torch.no_grad()
def tinymix_logits(vlm: TinyVLM, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Next-token logits of the tinymix model on one unpacked sequence (plain causal attention)."""
    positions = image_positions(input_ids, vlm.image_token_id, vlm.n_image_tokens(pixel_values.shape[-1]))
    embeds = vlm.embed(input_ids, pixel_values.to(vlm.vision.dtype), positions)
    return vlm.llm(inputs_embeds=embeds, use_cache=False).logits


@torch.no_grad()
def max_logit_error(vlm: TinyVLM, exported: torch.nn.Module, image_size: int) -> float:
    """Largest |logit difference| between the tinymix model and an exported one on a probe image and prompt."""
    ids, pixels = probe_inputs(vlm, image_size)
    pixels = pixels.to(vlm.vision.dtype)
    # the trained model may sit on a GPU; the exported copy is built on the CPU
    here, there = vlm.llm.get_input_embeddings().weight.device, exported.get_input_embeddings().weight.device
    ours = tinymix_logits(vlm, ids.to(here), pixels.to(here)).float().cpu()
    theirs = exported(input_ids=ids.to(there), pixel_values=pixels.to(there), use_cache=False).logits.float().cpu()
    return float((ours - theirs).abs().max())
