"""The vision tower: a 🤗 CLIP or SigLIP vision model and the choice of which hidden state feeds the connector.

The tower is loaded by name-or-path (`from_pretrained`) or built from an inline config (random weights); features are
the hidden states of `feature_layer` (LLaVA's -2), with the CLS token dropped where the tower has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mixer.manifest.model import VISION_MODEL_TYPES, VisionConfig


@dataclass(frozen=True)
class TowerKind:
    """One supported tower family: its 🤗 classes, whether it prepends a CLS token, and its usual normalisation."""

    model_class: type[nn.Module]
    config_class: type
    has_cls: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


_CLIP = TowerKind(CLIPVisionModel, CLIPVisionConfig, True, tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD))
_SIGLIP = TowerKind(SiglipVisionModel, SiglipVisionConfig, False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Keyed by 🤗 model_type; full CLIP / SigLIP checkpoints (model_type clip / siglip) load their vision half.
# The manifest validates against VISION_MODEL_TYPES, so the two must name the same types.
TOWERS: dict[str, TowerKind] = {
    "clip_vision_model": _CLIP,
    "clip": _CLIP,
    "siglip_vision_model": _SIGLIP,
    "siglip": _SIGLIP,
}
assert set(TOWERS) == set(VISION_MODEL_TYPES)


def tower_kind(model_type: str, where: str = "model.vision") -> TowerKind:
    """The tower family for a 🤗 `model_type`; unknown types are a user error naming the manifest field."""
    try:
        return TOWERS[model_type]
    except KeyError:
        raise ValueError(f"{where}: unsupported vision model_type {model_type!r}; one of {sorted(TOWERS)}") from None


class VisionTower(nn.Module):
    """A 🤗 vision model returning `[N, P, D]` patch features from one hidden layer."""

    def __init__(self, model: nn.Module, feature_layer: int, drop_cls: bool) -> None:
        super().__init__()
        self.model = model
        self.feature_layer = feature_layer
        self.kind = tower_kind(model.config.model_type)
        self.drop_cls = drop_cls and self.kind.has_cls

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def n_features(self, image_size: int) -> int:
        """Feature vectors per image at `image_size` pixels (patches, plus the CLS token when it is kept).

        The patch convolution (stride = kernel = patch) floors: SigLIP-so400m/14 at 384 px sees 27 × 27 = 729
        patches and ignores the last 6 pixel rows and columns, exactly as 🤗 runs it.
        """
        if image_size < self.patch_size:
            raise ValueError(f"image_size {image_size} is smaller than the patch size {self.patch_size}")
        n = (image_size // self.patch_size) ** 2
        return n + int(self.kind.has_cls and not self.drop_cls)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = pixel_values.shape[-1]
        out = self.model(
            pixel_values=pixel_values.to(self.dtype),
            output_hidden_states=True,
            # Position embeddings are learned for config.image_size; other sizes (224 → 448) are interpolated.
            interpolate_pos_encoding=size != self.model.config.image_size,
        )
        features = out.hidden_states[self.feature_layer]
        return features[:, 1:] if self.drop_cls else features


def load_vision_model(cfg: VisionConfig, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The 🤗 vision model named by `cfg`: `from_pretrained(name_or_path)` or random weights from the inline config."""
    if cfg.config is not None:
        options: dict[str, Any] = dict(cfg.config)
        model_type = options.pop("model_type")
        kind = tower_kind(model_type, "model.vision.config.model_type")
        config = AutoConfig.for_model(model_type, **options)
        if not isinstance(config, kind.config_class):
            # A full `clip` / `siglip` config: its vision half is what we build.
            config = config.vision_config
        return kind.model_class._from_config(config, dtype=dtype)
    assert cfg.name_or_path is not None  # the manifest validator guarantees one of the two
    model_type = AutoConfig.from_pretrained(cfg.name_or_path).model_type
    kind = tower_kind(model_type, f"model.vision.name_or_path ({cfg.name_or_path})")
    return kind.model_class.from_pretrained(cfg.name_or_path, dtype=dtype)


def build_vision(cfg: VisionConfig, dtype: torch.dtype = torch.float32) -> VisionTower:
    """The manifest's vision tower with its feature selection."""
    return VisionTower(load_vision_model(cfg, dtype), cfg.feature_layer, cfg.drop_cls)


def load_vision_folder(path: str | Path, feature_layer: int, drop_cls: bool, dtype: torch.dtype) -> VisionTower:
    """A tower saved with `save_pretrained` (an export's `vision/` folder)."""
    kind = tower_kind(AutoConfig.from_pretrained(path).model_type, str(path))
    return VisionTower(kind.model_class.from_pretrained(path, dtype=dtype), feature_layer, drop_cls)
