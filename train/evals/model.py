"""The model `train eval` asks: `load_for_eval(path)` → `EvalModel`, the one place that knows the export's layout.

Everything else in `train.evals` talks to `EvalModel` only: token ids of a prompt rendered with the template the
model was trained with, pixel values of an image, input embeddings with the images spliced in, and the causal LM
that continues them with a KV cache. Today it reads tinymix's export (`train.model.export.load_export`); a 🤗
`LlavaForConditionalGeneration` export would be read here (AutoModelForImageTextToText), nowhere else.
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
from train.model.export import EXPORT_JSON, load_export
from train.model.vlm import image_positions

IMAGE_MODE = "center_crop"  # mixer.loader.images.decode: shorter side to the size, centred square crop


def find_export(path: str | Path) -> Path:
    """An export folder, given it, a run folder (RUN/export) or a build folder (OUT/run/export)."""
    path = Path(path)
    for candidate in (path, path / "export", path / "run" / "export"):
        if (candidate / EXPORT_JSON).is_file():
            return candidate
    raise ValueError(f"{path}: not an export, run or build folder (no {EXPORT_JSON} in it, export/ or run/export/)")


@dataclass
class EvalModel:
    """A loaded VLM with what prompting it as it was trained needs."""

    vlm: Any
    tokenizer: Any
    template: str
    image_size: int
    mean_std: MeanStd
    path: Path
    task: str = "vqa"

    @property
    def n_image_tokens(self) -> int:
        return self.vlm.n_image_tokens(self.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

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
        return preprocess(data, self.image_size, self.mean_std)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Input embeddings of `[B, L]` ids with each row's image (one per row, in order) spliced in."""
        positions = image_positions(input_ids, self.vlm.image_token_id, self.n_image_tokens)
        dtype = self.vlm.llm.get_input_embeddings().weight.dtype
        return self.vlm.embed(input_ids, pixel_values.to(dtype), positions)

    @property
    def lm(self) -> Any:
        """The causal LM (🤗 AutoModelForCausalLM, maybe peft-wrapped): `inputs_embeds` / `input_ids`, KV cache."""
        return self.vlm.llm

    def card(self) -> dict:
        """What the eval card records about the model and how it is prompted."""
        return {
            "model": str(self.path),
            "template": self.template,
            "task_tag": self.task,
            "image_size": self.image_size,
            "image_mode": IMAGE_MODE,
            "mean_std": [list(self.mean_std[0]), list(self.mean_std[1])],
            "n_image_tokens": self.n_image_tokens,
        }


def from_vlm(vlm: Any, tokenizer: Any, template: str, image_size: int, norm: MeanStd, path: str = "") -> EvalModel:
    """An `EvalModel` around a VLM already in memory (after a stage, in the demo)."""
    return EvalModel(vlm.eval(), tokenizer, template, image_size, norm, Path(path))


def load_for_eval(path: str | Path) -> EvalModel:
    """Load an export (or a run / build folder holding one) for evaluation."""
    export = find_export(path)
    meta = json.loads((export / EXPORT_JSON).read_text())
    norm = check_mean_std(meta["mean_std"]) if meta.get("mean_std") else mean_std("clip_vision_model")
    vlm, tokenizer = load_export(export)
    model = EvalModel(vlm, tokenizer, meta.get("template", "llava_v1"), int(meta["image_size"]), norm, export)
    model.task = meta.get("task", "vqa")
    return model
