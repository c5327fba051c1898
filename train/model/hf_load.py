"""Loading an hf-format export through 🤗 alone, behind the small interface tinymix's evaluation calls.

`load_hf` returns the 🤗 model (`LlavaForConditionalGeneration`, or the bundle's class with `trust_remote_code`),
optionally in bf16 / fp16 or with int8 weights (`train.quantize`); `HFExportVLM` wraps it with the two methods
`train.evaluate` uses on a TinyVLM (`n_image_tokens`, greedy `generate` on prompt ids), so held-out evaluation and
`train eval` run the exported model itself, with no tinymix model code on the way.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForImageTextToText, AutoTokenizer, PreTrainedTokenizerBase

from train.model.hf_export import BUNDLE, ExportInfo, read_info
from train.model.hf_quant import backend_here, bnb_load_kwargs, quantize_int8

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_hf(export: str | Path, dtype: str = "fp32", int8: bool = False) -> tuple[nn.Module, ExportInfo]:
    """The exported 🤗 model in eval mode and what the export says about itself.

    `dtype`: fp32 | bf16 | fp16 for the weights and activations; `int8`: weight-only int8 on top (`hf_quant`).
    """
    info = read_info(export)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    backend = backend_here() if int8 else None
    extra = bnb_load_kwargs() if backend == "bitsandbytes" else {}
    model = AutoModelForImageTextToText.from_pretrained(
        export, dtype=DTYPES[dtype], trust_remote_code=info.form == BUNDLE, **extra
    )
    if backend == "torchao":
        quantize_int8(model)
    return model.eval(), info


class HFExportVLM(nn.Module):
    """An exported 🤗 VLM answering like `TinyVLM.generate`: greedy, `[B, max_new_tokens]` ids padded after EOS."""

    def __init__(self, model: nn.Module, info: ExportInfo) -> None:
        super().__init__()
        self.model = model
        self.info = info

    def n_image_tokens(self, image_size: int) -> int:
        if image_size != self.info.image_size:
            raise ValueError(f"the export takes {self.info.image_size}px images, asked for {image_size}px")
        return self.info.n_image_tokens

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        dtype = dtype if dtype.is_floating_point else torch.float32  # int8 weights: activations stay float
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=pixel_values.to(dtype) if pixel_values.shape[0] else None,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
        new = out[:, input_ids.shape[1] :]
        fill = self.model.generation_config.pad_token_id
        if new.shape[1] < max_new_tokens:
            new = F.pad(new, (0, max_new_tokens - new.shape[1]), value=fill)
        return new


def load_export_vlm(
    export: str | Path, dtype: str = "fp32", int8: bool = False
) -> tuple[HFExportVLM, PreTrainedTokenizerBase]:
    """(the exported model behind TinyVLM's inference methods, its tokenizer), for `train.evaluate`."""
    model, info = load_hf(export, dtype, int8)
    return HFExportVLM(model, info).eval(), AutoTokenizer.from_pretrained(export)
