"""The model's 🤗 parts checked at validation: inline configs instantiated, feature layers in range, names available.

An inline config is built with `AutoConfig.for_model` (no weights) exactly as `train` builds it, so a typo in a key,
an unknown `model_type`, heads that do not divide the width or a `feature_layer` past the tower's depth is a
validation error naming the field, not a traceback at `train launch`. A tokenizer given by hub name must be a local
folder or in the local 🤗 cache: validation never waits on a hub it may not reach.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable
from typing import Any

from mixer.manifest.model import VISION_MODEL_TYPES, ModelConfig
from mixer.manifest.yaml_lines import Path_

Report = Callable[[Path_, str], None]
_FIELD = re.compile(r"field '(\w+)'")
# Keys of older configs that 🤗 still accepts though they are no dataclass field of the current config classes.
_LEGACY_KEYS = {"torch_dtype", "rope_theta", "rope_scaling", "layer_norm_eps", "output_attentions", "num_labels"}


def _known(names: list[str], name: str) -> str:
    hint = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _make_config(model_type: str, options: dict[str, Any], where: Path_, report: Report) -> Any | None:
    """`AutoConfig.for_model(model_type, **options)`, or None after reporting why it cannot be built."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        report(
            (*where, "model_type"),
            f"unknown 🤗 model_type {model_type!r}{_known(list(CONFIG_MAPPING_NAMES), model_type)}",
        )
        return None
    config_class = CONFIG_MAPPING[model_type]
    fields = [f.name for f in dataclasses.fields(config_class)] if dataclasses.is_dataclass(config_class) else []
    # 🤗 configs take any keyword (a v4 config.json's rope_theta or torch_dtype is still understood), so only a key
    # that is not a field but nearly spells one is refused: a typo that would silently leave the default in place.
    typos = [
        (k, hint)
        for k in options
        if fields and k not in fields and k not in config_class.attribute_map and k not in _LEGACY_KEYS
        for hint in difflib.get_close_matches(k, fields, n=1, cutoff=0.8)
    ]
    for key, hint in typos:
        report((*where, key), f"unknown key {key!r} for a {model_type} config (did you mean {hint!r}?)")
    if typos:
        return None
    shape = _shape_problem(options)
    if shape:
        report((*where, shape[0]), shape[1])
        return None
    try:
        return AutoConfig.for_model(model_type, **options)
    except Exception as e:  # noqa: BLE001 - 🤗's strict dataclass errors and plain ValueError/TypeError alike
        text = str(e).strip().splitlines()
        field = _FIELD.search(text[0]) if text else None
        message = text[-1].strip() if text else type(e).__name__
        report((*where, field.group(1)) if field and field.group(1) in options else where, message)
        return None


def _shape_problem(options: dict[str, Any]) -> tuple[str, str] | None:
    """Attention shapes that a config class may accept but the model cannot run: (field, message) or None."""
    width, heads = options.get("hidden_size"), options.get("num_attention_heads")
    kv = options.get("num_key_value_heads")
    ints = all(isinstance(v, int) and v > 0 for v in (width, heads))
    if ints and "head_dim" not in options and width % heads:
        return "num_attention_heads", f"{heads} heads do not divide hidden_size {width}"
    if ints and isinstance(kv, int) and kv > 0 and heads % kv:
        return "num_key_value_heads", f"{kv} key/value heads do not divide num_attention_heads {heads}"
    return None


def _vision_half(config: Any) -> Any:
    """A full CLIP / SigLIP config's vision tower config; a vision config itself otherwise."""
    return getattr(config, "vision_config", None) or config


def _check_feature_layer(m: ModelConfig, config: Any, where: Path_, report: Report) -> None:
    depth = int(getattr(_vision_half(config), "num_hidden_layers", 0) or 0)
    layer = m.vision.feature_layer
    if depth and not -(depth + 1) <= layer <= depth:
        report(
            (*where, "vision", "feature_layer"),
            f"{layer} is out of range: the tower has {depth} layers, so hidden states -{depth + 1}..{depth}",
        )


def check_inline_configs(m: ModelConfig, report: Report, where: Path_ = ("model",)) -> None:
    """Build the inline vision and LLM configs (no weights) and check what the model will need of them."""
    vision, llm = m.vision.config, m.llm.config
    if vision is not None:
        options = {k: v for k, v in vision.items() if k != "model_type"}
        model_type = str(vision["model_type"])
        if model_type not in VISION_MODEL_TYPES:
            known = ", ".join(VISION_MODEL_TYPES)
            report(
                (*where, "vision", "config", "model_type"), f"unsupported vision tower {model_type!r}; one of {known}"
            )
        else:
            config = _make_config(model_type, options, (*where, "vision", "config"), report)
            if config is not None:
                _check_feature_layer(m, config, where, report)
    elif m.vision.name_or_path and os.path.isdir(m.vision.name_or_path):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(m.vision.name_or_path, local_files_only=True)
        except (OSError, ValueError) as e:
            report((*where, "vision", "name_or_path"), f"cannot read its config.json: {str(e).splitlines()[0]}")
        else:
            _check_feature_layer(m, config, where, report)
    if llm is not None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        model_type = str(llm["model_type"])
        options = {k: v for k, v in llm.items() if k != "model_type"}
        config = _make_config(model_type, options, (*where, "llm", "config"), report)
        if config is not None and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            report((*where, "llm", "config", "model_type"), f"{model_type!r} is not a 🤗 causal LM")


def hub_name_problem(name: str) -> str | None:
    """Why the tokenizer `name` cannot be loaded without the network (not a folder, not cached), or None."""
    if os.path.isdir(name):
        return None
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = [try_to_load_from_cache(name, f) for f in ("tokenizer_config.json", "tokenizer.json", "config.json")]
    except HFValidationError:
        return f"{name!r} is neither a local folder nor a 🤗 hub name"
    if any(isinstance(c, str) for c in cached):
        return None
    return (
        f"{name!r} is neither a local folder nor in the local 🤗 cache ({constants.HF_HUB_CACHE}); "
        f"fetch it first (`hf download {name}`) or name a folder saved with save_pretrained"
    )
