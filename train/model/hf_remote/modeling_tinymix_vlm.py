"""A tinymix VLM as 🤗 remote code: vision tower → connector → causal LM, where Llava cannot express it exactly.

That is: Phi's biased lm_head, Q-Former / resampler connectors, TinyGPT-V's QK-norm and post-attention RMSNorm.

This file is copied into the export folder and imports only torch and transformers (>= 5.0):

    AutoModelForImageTextToText.from_pretrained(EXPORT, trust_remote_code=True)

Weight names are tinymix's own (`vision.model.*`, `connector.*`, `llm.*`); the LLM is 🤗's causal LM for
`text_config`, so Phi's `lm_head` keeps its bias. Each image's run of `<image>` tokens is replaced by the connector's
outputs, as in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec

# ---- configuration ------------------------------------------------------------------------------------------------


class TinymixVLMConfig(PreTrainedConfig):
    """Vision and text sub-configs plus how they are joined (connector, feature layer, image token, options)."""

    model_type = "tinymix_vlm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="phi"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    connector: dict | None = None
    """type (linear | mlp2x_gelu | resampler | qformer), vision_dim, llm_dim, num_queries, num_layers."""
    vision_feature_layer: int = -2
    drop_cls: bool = True
    """Drop the tower's CLS feature (CLIP); SigLIP has none."""
    image_token_id: int = 0
    image_seq_length: int = 576
    post_attn_norm: bool = False
    """TinyGPT-V's RMSNorm on every attention output (computed in fp32)."""
    fp32_norms: bool = False
    """LayerNorms computed and stored in fp32 (TinyGPT-V)."""
    tie_word_embeddings: bool = False


# ---- connectors (the same modules and weight names as tinymix's train/model/connectors.py) -------------------------


def _heads(dim: int) -> int:
    for h in (16, 8, 4, 2):
        if dim % h == 0 and dim // h >= 16:
            return h
    return 1


class Linear(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.proj = nn.Linear(spec["vision_dim"], spec["llm_dim"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class MLP2xGelu(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        dim = spec["llm_dim"]
        self.proj = nn.Sequential(nn.Linear(spec["vision_dim"], dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class _CrossBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, _heads(dim), batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, queries: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = self.norm_q(queries)
        queries = queries + self.attn(q, kv, kv, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class Resampler(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        dim = spec["llm_dim"]
        self.queries = nn.Parameter(torch.zeros(spec["num_queries"], dim))
        self.kv_proj = nn.Linear(spec["vision_dim"], dim)
        self.blocks = nn.ModuleList(_CrossBlock(dim) for _ in range(spec["num_layers"]))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        kv = self.kv_proj(features)
        x = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, kv)
        return self.norm_out(x)


class QFormer(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        width = spec["vision_dim"]
        config = Blip2QFormerConfig(
            hidden_size=width,
            num_hidden_layers=spec["num_layers"],
            num_attention_heads=_heads(width),
            intermediate_size=4 * width,
            encoder_hidden_size=width,
            cross_attention_frequency=1,
        )
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, spec["num_queries"], width))
        self.proj = nn.Linear(width, spec["llm_dim"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state
        return self.proj(out.to(self.proj.weight.dtype))


CONNECTORS = {"linear": Linear, "mlp2x_gelu": MLP2xGelu, "resampler": Resampler, "qformer": QFormer}


# ---- TinyGPT-V's norms ---------------------------------------------------------------------------------------------


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class FP32RMSNorm(nn.Module):
    """RMSNorm computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def _post_attn_norm_hook(module: nn.Module, args, output):
    # attention modules return (attn_output, attn_weights): only the output is normalised
    if isinstance(output, tuple):
        return (module.post_attn_norm(output[0]), *output[1:])
    return module.post_attn_norm(output)


def _add_post_attn_norms(llm: nn.Module) -> None:
    config = llm.config
    eps = float(getattr(config, "layer_norm_eps", None) or getattr(config, "rms_norm_eps", None) or 1e-5)
    for module in list(llm.modules()):
        attn = getattr(module, "self_attn", None)
        if isinstance(attn, nn.Module) and not hasattr(attn, "post_attn_norm"):
            attn.add_module("post_attn_norm", FP32RMSNorm(config.hidden_size, eps))
            attn.register_forward_hook(_post_attn_norm_hook)


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")


def _fp32_layer_norms(llm: nn.Module) -> list[str]:
    """Swap every nn.LayerNorm for FP32LayerNorm (same weights) and return the names of all norms."""
    for parent in list(llm.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:
                bias = child.bias is not None
                norm = FP32LayerNorm(child.normalized_shape, child.eps, child.elementwise_affine, bias=bias)
                norm.load_state_dict(child.state_dict())
                setattr(parent, name, norm)
    return [name for name, module in llm.named_modules() if _is_norm(module)]


# ---- the model -----------------------------------------------------------------------------------------------------


class VisionTower(nn.Module):
    """The 🤗 vision model and the hidden layer whose features feed the connector."""

    def __init__(self, config: TinymixVLMConfig) -> None:
        super().__init__()
        self.model = AutoModel.from_config(config.vision_config)
        self.feature_layer = config.vision_feature_layer
        self.drop_cls = config.drop_cls

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model(
            pixel_values=pixel_values.to(dtype),
            output_hidden_states=True,
            interpolate_pos_encoding=pixel_values.shape[-1] != self.model.config.image_size,
        )
        features = out.hidden_states[self.feature_layer]
        return features[:, 1:] if self.drop_cls else features


class TinymixVLMForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """Vision tower → connector → 🤗 causal LM, with each image's `<image>` tokens replaced by connector outputs."""

    config: TinymixVLMConfig
    config_class = TinymixVLMConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    _supports_sdpa = True
    _supports_flash_attn = True
    _skip_keys_device_placement = ["past_key_values"]

    def __init__(self, config: TinymixVLMConfig) -> None:
        super().__init__(config)
        self.vision = VisionTower(config)
        self.connector = CONNECTORS[config.connector["type"]](config.connector)
        self.llm = AutoModelForCausalLM.from_config(config.text_config)
        if config.post_attn_norm:
            _add_post_attn_norms(self.llm)
        if config.fp32_norms:
            # stored and computed in fp32 as in training, even when the model is loaded in bf16 / fp16
            self._keep_in_fp32_modules_strict = {f"llm.{n}" for n in _fp32_layer_norms(self.llm)}
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FP32RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, T, D]` connector outputs for `N` images."""
        return self.connector(self.vision(pixel_values))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("images need input_ids to find their <image> tokens")
            features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
            mask = input_ids == self.config.image_token_id
            if int(mask.sum()) != features.shape[0] * features.shape[1]:
                raise ValueError(
                    f"{int(mask.sum())} <image> tokens in input_ids, but {features.shape[0]} images x "
                    f"{features.shape[1]} features"
                )
            inputs_embeds = inputs_embeds.masked_scatter(
                mask.unsqueeze(-1).to(inputs_embeds.device), features.reshape(-1, features.shape[-1])
            )
        return self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
