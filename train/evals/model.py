"""The model `train eval` asks: `load_for_eval(path)` → `EvalModel`, the one place that knows the export's layout.

Everything else in `train.evals` talks to `EvalModel` only: the token ids of a prompt rendered with the template the
model was trained with, the pixel values of an image, and `forward` (ids, optional pixels, attention mask, positions,
KV cache → logits and the cache). Two backends sit behind it:

- an hf export (`train launch`'s default: 🤗-native `LlavaForConditionalGeneration` or the remote-code bundle),
  loaded with `AutoModelForImageTextToText` (`train.model.hf_load.load_hf`) and called as 🤗 calls it;
- a `--format tinymix` export (`train.model.export.load_export`) or a `TinyVLM` in memory (after a stage, in the
  demo): images spliced by `TinyVLM.embed`, the causal LM continued with its KV cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixer.batch import IGNORE_INDEX
from mixer.loader.images import MeanStd, check_mean_std, mean_std, preprocess
from mixer.templates import encode
from mixer.tokenizer import load_tokenizer
from train.model.export import EXPORT_JSON, load_export
from train.model.hf_export import INFO_JSON
from train.model.vlm import image_positions


def find_export(path: str | Path) -> Path:
    """An export folder (hf or tinymix form), given it, a run folder (RUN/export) or a build folder (OUT/run/export)."""
    path = Path(path)
    for candidate in (path, path / "export", path / "run" / "export"):
        if (candidate / INFO_JSON).is_file() or (candidate / EXPORT_JSON).is_file():
            return candidate
    raise ValueError(
        f"{path}: not an export, run or build folder (no {INFO_JSON} or {EXPORT_JSON} in it, export/ or run/export/)"
    )


@dataclass
class EvalModel:
    """A loaded VLM with what prompting it as it was trained needs.

    `vlm` is a TinyVLM, or (with `hf=True`) a 🤗 image-text-to-text model taking `input_ids` + `pixel_values`.
    """

    vlm: Any
    tokenizer: Any
    template: str
    image_size: int
    mean_std: MeanStd
    path: Path
    task: str = "vqa"
    hf: bool = False
    hf_image_tokens: int = 0
    """hf exports: image tokens per image, as the export records it."""
    image_preprocess: str = "crop"
    """How images are fitted to the square: `crop` or `pad` (as the last stage trained, recorded by the export)."""

    @property
    def n_image_tokens(self) -> int:
        return self.hf_image_tokens if self.hf else self.vlm.n_image_tokens(self.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        dtype = next(self.vlm.parameters()).dtype
        return dtype if dtype.is_floating_point else torch.float32  # int8 weights: activations stay float

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def encode(self, text: str, answer: str) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of one user turn (image + `text`) and the assistant's `answer`.

        Rendered with the training template; the answer ids include the turn's end marker.
        """
        conv = [{"role": "user", "content": f"<image>\n{text}"}, {"role": "assistant", "content": answer}]
        enc = encode(conv, self.tokenizer, self.template, self.n_image_tokens, task=self.task)
        first = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
        return enc.input_ids[:first], [t for t in enc.labels[first:] if t != IGNORE_INDEX]

    def prompt_ids(self, text: str) -> list[int]:
        """Everything the template puts before the assistant's first labelled token."""
        return self.encode(text, ".")[0]  # any answer will do: only the prompt before it is kept

    def pixels(self, image: Path | bytes) -> torch.Tensor:
        """The [3, S, S] input of one image file or encoded image."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return preprocess(data, self.image_size, self.mean_std, self.image_preprocess)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
    ) -> Any:
        """Logits (and the KV cache) of `[B, L]` ids; `pixel_values` holds one image per row on the first call.

        `logits_to_keep=1`: only the last position's logits (🤗's argument), all generation reads of a prefill; with a
        real vocabulary the LM head over every prompt position is a large share of it.
        """
        kw = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": use_cache}
        if logits_to_keep:
            kw["logits_to_keep"] = logits_to_keep
        if past_key_values is not None:
            kw["past_key_values"] = past_key_values
        if self.hf:
            pixels = None if pixel_values is None else pixel_values.to(self.dtype)
            return self.vlm(input_ids=input_ids, pixel_values=pixels, **kw)
        if pixel_values is None:
            return self.vlm.llm(input_ids=input_ids, **kw)
        positions = image_positions(input_ids, self.vlm.image_token_id, self.n_image_tokens)
        embeds = self.vlm.embed(input_ids, pixel_values.to(self.dtype), positions)
        return self.vlm.llm(inputs_embeds=embeds, **kw)

    def card(self) -> dict:
        """What the eval card records about the model and how it is prompted."""
        return {
            "model": str(self.path),
            "form": "hf" if self.hf else "tinymix",
            "template": self.template,
            "task_tag": self.task,
            "image_size": self.image_size,
            "image_mode": self.image_preprocess,
            "mean_std": [list(self.mean_std[0]), list(self.mean_std[1])],
            "n_image_tokens": self.n_image_tokens,
        }


def from_vlm(vlm: Any, tokenizer: Any, template: str, image_size: int, norm: MeanStd, path: str = "") -> EvalModel:
    """An `EvalModel` around a model already in memory: a TinyVLM, or what `load_export` returns for an hf export."""
    from train.model.hf_load import HFExportVLM

    if isinstance(vlm, HFExportVLM):  # load_export's answer for an hf export: evaluate the 🤗 model inside
        return EvalModel(
            vlm.model.eval(), tokenizer, template, image_size, norm, Path(path), hf=True,
            hf_image_tokens=vlm.info.n_image_tokens,
        )  # fmt: skip
    return EvalModel(vlm.eval(), tokenizer, template, image_size, norm, Path(path))


def _hf_mean_std(export: Path) -> MeanStd:
    """The export's image processor's mean / std (the tower's, as training normalised)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(export)
    return check_mean_std([processor.image_mean, processor.image_std])


def load_for_eval(path: str | Path) -> EvalModel:
    """Load an export (or a run / build folder holding one) for evaluation, in either export form."""
    export = find_export(path)
    if (export / INFO_JSON).is_file():
        from train.model.hf_load import load_hf

        model, info = load_hf(export)
        tokenizer = load_tokenizer(str(export))
        return EvalModel(
            model, tokenizer, info.template, info.image_size, _hf_mean_std(export), export, hf=True,
            hf_image_tokens=info.n_image_tokens, image_preprocess=info.image_preprocess,
        )  # fmt: skip
    meta = json.loads((export / EXPORT_JSON).read_text())
    norm = check_mean_std(meta["mean_std"]) if meta.get("mean_std") else mean_std("clip_vision_model")
    vlm, tokenizer = load_export(export)
    model = EvalModel(vlm, tokenizer, meta.get("template", "llava_v1"), int(meta["image_size"]), norm, export)
    model.task = meta.get("task", "vqa")
    model.image_preprocess = meta.get("image_preprocess", "crop")
    return model
