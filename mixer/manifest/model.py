"""The manifest's `model:` section: vision tower, connector, LLM and tokenizer, and the image-token arithmetic.

Each part is either a 🤗 name-or-path (loaded with `from_pretrained`, exactly as `microsoft/phi-2` is on a user's
machine) or an inline config (a randomly initialised model, used by the demo and the tests).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from shards.options import Strict

ConnectorType = Literal["linear", "mlp2x_gelu", "resampler", "qformer"]
# 🤗 model types train builds a tower from (train/model/vision.py TOWERS); full CLIP / SigLIP give their vision half.
VISION_MODEL_TYPES = ("clip_vision_model", "clip", "siglip_vision_model", "siglip")

# Towers whose patch size cannot be read from an inline config or a local folder; a hub name usually says it.
_PATCH_IN_NAME = re.compile(r"patch(\d+)")
_KNOWN_PATCH = {"google/siglip-so400m-patch14-384": 14, "timm/eva02": 14}


class PretrainedOrConfig(Strict):
    """Either `name_or_path` (🤗 hub name or local folder) or an inline `config` dict (random initialisation)."""

    name_or_path: str | None = Field(None, description="🤗 model name or local folder saved with save_pretrained.")
    config: dict[str, Any] | None = Field(
        None, description="Inline 🤗 config (must include model_type) for a randomly initialised model."
    )

    @model_validator(mode="after")
    def _one_of(self) -> PretrainedOrConfig:
        if (self.name_or_path is None) == (self.config is None):
            raise ValueError("give exactly one of name_or_path or config")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("config needs a model_type (e.g. clip_vision_model, siglip_vision_model, llama, phi)")
        return self


class VisionConfig(PretrainedOrConfig):
    """The vision tower: 🤗 CLIPVisionModel / SiglipVisionModel."""

    feature_layer: int = Field(-2, description="Hidden-state layer fed to the connector (LLaVA uses -2).")
    drop_cls: bool = Field(True, description="Drop the CLS token where the tower has one (CLIP has, SigLIP has not).")
    patch_size: int | None = Field(
        None, gt=0, description="Override the patch size when it cannot be read from the config or the name."
    )
    checkpointing: bool = Field(False, description="Gradient checkpointing in the vision tower too.")

    def resolved_patch_size(self) -> int | None:
        if self.patch_size:
            return self.patch_size
        if self.config is not None:
            return int(self.config.get("patch_size", 0)) or None
        local = self._local_config()
        if local is not None:  # a folder saved with save_pretrained; a full CLIP / SigLIP keeps it in vision_config
            return int(local.get("patch_size") or (local.get("vision_config") or {}).get("patch_size") or 0) or None
        name = self.name_or_path or ""
        if name in _KNOWN_PATCH:
            return _KNOWN_PATCH[name]
        m = _PATCH_IN_NAME.search(name)
        return int(m.group(1)) if m else None

    @property
    def has_cls(self) -> bool:
        """CLIP towers prepend a CLS token; SigLIP towers do not."""
        return "siglip" not in self.model_type.lower()

    @property
    def model_type(self) -> str:
        """The tower's 🤗 model_type when known (inline config or local folder), else its hub name."""
        if self.config is not None:
            return str(self.config.get("model_type", ""))
        local = self._local_config()
        if local is not None:  # a local folder: its config says what it is, whatever the folder is called
            return str(local.get("model_type", ""))
        return self.name_or_path or ""

    def _local_config(self) -> dict[str, Any] | None:
        """The config.json of a local tower folder, if `name_or_path` is one (and it is readable)."""
        path = os.path.join(self.name_or_path or "", "config.json")
        if not self.name_or_path or not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


class ConnectorConfig(Strict):
    """Vision features → LLM embeddings."""

    type: ConnectorType = Field("mlp2x_gelu", description="linear, mlp2x_gelu, resampler or qformer.")
    num_queries: int = Field(32, gt=0, description="Learned queries (image tokens) for resampler / qformer.")
    num_layers: int = Field(2, gt=0, description="Cross-attention layers of the resampler / qformer.")
    lr: float | None = Field(None, gt=0, description="Learning rate for the connector (default: the stage's lr).")


class LLMConfig(PretrainedOrConfig):
    """The causal LM: any 🤗 AutoModelForCausalLM."""

    qk_norm: bool = Field(False, description="TinyGPT-V: LayerNorm on queries and keys (Phi-style models).")
    post_attn_norm: bool = Field(False, description="TinyGPT-V: RMSNorm after attention (Phi-style models).")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="auto: flash-attention on a GPU where installed, else SDPA; eager on the CPU."
    )


class ModelConfig(Strict):
    """The whole VLM."""

    vision: VisionConfig
    connector: ConnectorConfig = Field(default_factory=ConnectorConfig)
    llm: LLMConfig
    tokenizer: str | None = Field(None, description="🤗 tokenizer name or folder (default: llm.name_or_path).")
    image_tokens: int | None = Field(
        None, gt=0, description="Override the number of image tokens per image (else derived from tower + connector)."
    )

    @model_validator(mode="after")
    def _tokenizer(self) -> ModelConfig:
        if self.tokenizer is None and self.llm.name_or_path is None:
            raise ValueError("tokenizer: required when the llm is an inline config")
        return self

    def tokenizer_path(self) -> str:
        return self.tokenizer or self.llm.name_or_path or ""

    def image_tokens_for(self, image_size: int) -> int:
        """Image tokens one image takes in the LLM's sequence at `image_size` pixels."""
        if self.image_tokens:
            return self.image_tokens
        if self.connector.type in ("resampler", "qformer"):
            return self.connector.num_queries
        patch = self.vision.resolved_patch_size()
        if not patch:
            raise ValueError("cannot derive the vision patch size; set model.vision.patch_size or model.image_tokens")
        if image_size < patch:
            raise ValueError(f"image_size {image_size} is smaller than the patch size {patch}")
        n = (image_size // patch) ** 2  # the patch conv floors: SigLIP-so400m/14 at 384 px gives 27² = 729
        if self.vision.has_cls and not self.vision.drop_cls:
            n += 1
        return n
