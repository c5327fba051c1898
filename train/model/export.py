"""`--format tinymix`: each part of the VLM saved for 🤗 `from_pretrained`, and `load_export` to reassemble them.

(The default export is `--format hf`, `train.model.hf_export`; `load_export` reads both.)

Layout of EXPORT/:

    config.json, model.safetensors      the LLM (LoRA merged, or the base weights when kept as an adapter)
    tokenizer files                     AutoTokenizer.from_pretrained(EXPORT)
    preprocessor_config.json            CLIPImageProcessor.from_pretrained(EXPORT): the stage's size, mean and std
    vision/                             CLIPVisionModel / SiglipVisionModel.from_pretrained(EXPORT / "vision")
    adapter/                            peft adapter (only with lora="adapter"): PeftModel.from_pretrained(llm, …)
    connector.safetensors               connector weights
    post_attn_norms.safetensors         TinyGPT-V post-attention RMSNorms (only when enabled; 🤗 Phi has no slot)
    tinymix_vlm.json                    how the parts fit: connector spec, feature layer, image token, options
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from mixer.batch import IMAGE_TOKEN
from train.model.connectors import ConnectorSpec, build_connector
from train.model.lora import has_lora, merge_lora
from train.model.tinygpt import POST_ATTN_NORM, add_post_attn_norms, has_post_attn_norms, keep_norms_fp32
from train.model.vision import load_vision_folder
from train.model.vlm import TinyVLM, attn_implementation_here

EXPORT_JSON = "tinymix_vlm.json"
EXPORT_VERSION = 1


def _base_state_dict(llm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LLM's own weights: peft's `…base_layer.weight` renamed back, adapter tensors left out."""
    if not isinstance(llm, PeftModel):
        return llm.state_dict()
    state = {}
    for key, value in llm.get_base_model().state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


def _split_post_attn_norms(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: state.pop(k) for k in [k for k in state if f".{POST_ATTN_NORM}." in k]}


def image_processor(
    vlm: TinyVLM, image_size: int, mean: Sequence[float] | None, std: Sequence[float] | None, pad: bool = False
):
    """The stage's image processing as a 🤗 image processor, as `mixer.loader.images.decode` does it.

    Shorter side to the size and a centred crop; with `pad` (LLaVA-1.5's `expand2square`) a square of the mean
    colour around the image first.
    """
    # transformers 5 backs the processors with torchvision; without it the PIL twin is the same processor.
    fast = importlib.util.find_spec("torchvision") is not None
    if pad:  # LlavaImageProcessor pads with int(mean * 255), exactly as the loader's `pad`
        from transformers import LlavaImageProcessor, LlavaImageProcessorPil

        processor, extra = (LlavaImageProcessor if fast else LlavaImageProcessorPil), {"do_pad": True}
    else:
        from transformers import CLIPImageProcessor, CLIPImageProcessorPil

        processor, extra = (CLIPImageProcessor if fast else CLIPImageProcessorPil), {}
    return processor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(mean or vlm.vision.kind.image_mean),
        image_std=list(std or vlm.vision.kind.image_std),
        **extra,
    )


def save_export(
    vlm: TinyVLM,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    image_size: int,
    lora: Literal["merge", "adapter"] = "merge",
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> Path:
    """Write the export folder. With `lora="merge"` the adapters are merged into `vlm` itself first (in place)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if lora == "merge":
        merge_lora(vlm)
    adapter = has_lora(vlm)
    base = vlm.llm.get_base_model() if adapter else vlm.llm
    state = _base_state_dict(vlm.llm)
    norms = _split_post_attn_norms(state)
    base.save_pretrained(out, state_dict=state)
    if adapter:
        vlm.llm.save_pretrained(out / "adapter")
    if norms:
        save_file({k: v.contiguous() for k, v in norms.items()}, out / "post_attn_norms.safetensors")
    vlm.vision.model.save_pretrained(out / "vision")
    save_file({k: v.contiguous() for k, v in vlm.connector.state_dict().items()}, out / "connector.safetensors")
    tokenizer.save_pretrained(out)
    image_processor(vlm, image_size, image_mean, image_std).save_pretrained(out)
    meta = {
        "version": EXPORT_VERSION,
        "image_token": IMAGE_TOKEN,
        "image_size": image_size,
        "n_image_tokens": vlm.n_image_tokens(image_size),
        "dtype": str(vlm.llm.get_input_embeddings().weight.dtype).removeprefix("torch."),
        "vision": {"feature_layer": vlm.vision.feature_layer, "drop_cls": vlm.vision.drop_cls},
        "connector": vlm.connector.spec.to_dict(),
        "llm": {
            "lora": "adapter" if adapter else None,
            "post_attn_norm": bool(norms) or has_post_attn_norms(base),
            "fp32_norms": bool(norms) or bool(getattr(base.config, "qk_layernorm", False)),
        },
    }
    (out / EXPORT_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _load_llm(out: Path, meta: dict, dtype: torch.dtype) -> torch.nn.Module:
    llm = AutoModelForCausalLM.from_pretrained(out, dtype=dtype, attn_implementation=attn_implementation_here())
    if meta["llm"]["post_attn_norm"]:
        add_post_attn_norms(llm)
        missing, unexpected = llm.load_state_dict(load_file(out / "post_attn_norms.safetensors"), strict=False)
        missing = [k for k in missing if f".{POST_ATTN_NORM}." in k]
        if missing or unexpected:
            raise ValueError(f"{out / 'post_attn_norms.safetensors'}: missing {missing}, unexpected {unexpected}")
    if meta["llm"]["fp32_norms"]:
        keep_norms_fp32(llm)
    if meta["llm"]["lora"] == "adapter":
        llm = PeftModel.from_pretrained(llm, out / "adapter")
    return llm


def load_export(out_dir: str | Path) -> tuple[TinyVLM, PreTrainedTokenizerBase]:
    """Reassemble a VLM from an export folder (in eval mode), each part through its own `from_pretrained`.

    An hf-format export (`train.model.hf_export`) loads through 🤗 instead, behind the same inference methods.
    """
    out = Path(out_dir)
    if (out / "tinymix_export.json").is_file():
        from train.model.hf_load import load_export_vlm  # imports this module

        return load_export_vlm(out)  # type: ignore[return-value]
    meta_path = out / EXPORT_JSON
    if not meta_path.is_file():
        raise ValueError(f"{out}: not a tinymix export ({EXPORT_JSON} is missing)")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != EXPORT_VERSION:
        raise ValueError(f"{meta_path}: export version {meta.get('version')!r}, this tinymix reads {EXPORT_VERSION}")
    dtype = getattr(torch, meta["dtype"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    llm = _load_llm(out, meta, dtype)
    vision = load_vision_folder(out / "vision", meta["vision"]["feature_layer"], meta["vision"]["drop_cls"], dtype)
    connector = build_connector(ConnectorSpec(**meta["connector"]))
    connector.load_state_dict(load_file(out / "connector.safetensors"))
    image_token_id = tokenizer.convert_tokens_to_ids(meta["image_token"])
    vlm = TinyVLM(vision, connector.to(dtype), llm, image_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id)
    return vlm.eval(), tokenizer
