"""`--format hf`: the export the ecosystem loads — 🤗-native Llava when the model fits it, a remote-code bundle if not.

EXPORT/ then holds what `from_pretrained` and `pipeline("image-text-to-text", model=EXPORT)` read:

    config.json, model.safetensors      `model_type: llava` (LlavaForConditionalGeneration), or `tinymix_vlm` with
                                        `auto_map` and modeling_tinymix_vlm.py (trust_remote_code=True)
    generation_config.json              the tokenizer's bos / eos / pad ids, greedy
    tokenizer files, chat_template.jinja the training template as Jinja (`hf_template`), `<image>` special
    processor_config.json               LlavaProcessor: how many `<image>` tokens one image becomes, and its image
                                        processor (the stage's size: shortest edge, centre crop; the tower's mean/std)
    tinymix_export.json                 which form was written and why, the template, the measured logit error

Before writing, the exported model's logits are compared with the tinymix model's on a probe image and prompt; a
native model that does not match falls back to the bundle, and a bundle that does not match is an error — the export
is never silently different from what was trained.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlavaProcessor

from mixer.batch import IMAGE_TOKEN
from mixer.templates import get_template
from train.model.export import EXPORT_JSON, image_processor, save_export
from train.model.hf_bundle import to_bundle
from train.model.hf_llava import max_logit_error, misfit, to_llava
from train.model.hf_template import chat_template
from train.model.lora import merge_lora
from train.model.vlm import TinyVLM

INFO_JSON = "tinymix_export.json"
NATIVE, BUNDLE = "llava", "remote-code"
FORMATS = ("hf", "tinymix")


def tolerance(dtype: torch.dtype) -> float:
    """Largest logit difference accepted between the export and the trained model (the issue's 1e-4 in fp32)."""
    return 1e-4 if dtype == torch.float32 else 2e-2


@dataclass
class ExportInfo:
    """What `save_hf_export` wrote: the form, why that form, and how close its logits are to the trained model."""

    form: str
    reason: str
    max_logit_error: float
    template: str
    image_size: int
    n_image_tokens: int
    task_tags: dict[str, str]
    mean_std: list[list[float]] | None = None
    """The tower's per-channel (mean, std), as the image processor has them (for `mixer.loader.images.preprocess`)."""
    image_preprocess: str = "crop"
    """How the last stage fitted images to the square: `crop` or `pad` (the image processor does the same)."""

    def summary(self) -> str:
        if self.form == "tinymix":
            return f"tinymix export: {self.reason}"
        how = "LlavaForConditionalGeneration" if self.form == NATIVE else "remote code, trust_remote_code=True"
        return (
            f"{self.form} export ({how}): {self.reason}; logits within {self.max_logit_error:.1g} of the trained model"
        )


def set_token_ids(config: Any, tokenizer: Any) -> None:
    """The tokenizer's bos / eos / pad ids on an LLM config (inline configs otherwise keep e.g. Llama's 1 / 2)."""
    for name in ("bos", "eos", "pad"):
        setattr(config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))


def _generation_config(tokenizer: Any) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )


def plain_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer, or a copy that adds no bos / eos of its own (Llama's adds `<s>` to every text).

    Training tokenised with `add_special_tokens=False`: the template writes `{bos}` where it wants one. A 🤗
    processor (pipeline, vLLM) tokenises the rendered prompt with special tokens unless it starts with bos, so a
    template without `{bos}` would get one extra token at inference.
    """
    probe = "a b"
    if tokenizer(probe)["input_ids"] == tokenizer(probe, add_special_tokens=False)["input_ids"]:
        return tokenizer
    tok = copy.deepcopy(tokenizer)
    for attr in ("add_bos_token", "add_eos_token"):
        if getattr(tok, attr, False):
            setattr(tok, attr, False)
    if tok(probe)["input_ids"] != tok(probe, add_special_tokens=False)["input_ids"]:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} adds special tokens to every text and they cannot be switched "
            "off (add_bos_token / add_eos_token); the exported chat template would not reproduce training's ids"
        )
    return tok


def _clear(out: Path, names: Sequence[str]) -> None:
    """Remove another format's files left in `out` by an earlier export, so one folder never holds both forms."""
    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# what `--format tinymix` writes besides the LLM's config / weights and the tokenizer (see train.model.export)
TINYMIX_FILES = (EXPORT_JSON, "connector.safetensors", "post_attn_norms.safetensors", "vision", "adapter")
HF_FILES = (INFO_JSON, "modeling_tinymix_vlm.py", "processor_config.json", "chat_template.jinja")


def _pick(vlm: TinyVLM, image_size: int) -> tuple[str, str, torch.nn.Module, float]:
    """(form, reason, exported model, its max logit error)."""
    tol = tolerance(vlm.vision.dtype)
    reason = misfit(vlm)
    native = None
    if reason is None:
        try:
            native = to_llava(vlm, image_size)
        except ValueError as e:  # an LLM whose weights do not map onto AutoModel(text_config)
            reason = str(e)
    if native is not None:
        err = max_logit_error(vlm, native, image_size)
        if err <= tol:
            why = f"{vlm.vision.model.config.model_type} tower, {vlm.connector.spec.type} connector, "
            return NATIVE, why + f"{vlm.llm.config.model_type} LLM fit Llava exactly", native, err
        reason = f"Llava's logits differ from the model's by {err:.2g} ({vlm.llm.config.model_type} LLM)"
        del native
    bundle = to_bundle(vlm, image_size)
    err = max_logit_error(vlm, bundle, image_size)
    if err > tol:
        raise ValueError(f"remote-code bundle: logits differ from the trained model's by {err:.2g} (> {tol:g})")
    return BUNDLE, reason, bundle, err


def processor(
    vlm: TinyVLM,
    tokenizer: Any,
    form: str,
    image_size: int,
    template: str,
    image_mean: Sequence[float] | None,
    image_std: Sequence[float] | None,
    image_preprocess: str = "crop",
) -> LlavaProcessor:
    """LlavaProcessor: the stage's image processing, the tokenizer, the training template, `<image>` expansion.

    Llava's processor expands each `<image>` to `(size // patch_size)² + num_additional_image_tokens` tokens, minus
    one for strategy `default`. The native form states the tower's real patch size; the bundle's connector emits a
    fixed count whatever the tower (32 queries for a Q-Former), so it is written as one patch plus the rest.
    """
    n = vlm.n_image_tokens(image_size)
    if form == NATIVE:
        patch, extra = vlm.vision.patch_size, int(vlm.vision.kind.has_cls)
        strategy = "default" if vlm.vision.drop_cls else "full"
    else:
        patch, extra, strategy = image_size, n - 1, "full"
    proc = LlavaProcessor(
        image_processor=image_processor(vlm, image_size, image_mean, image_std, image_preprocess == "pad"),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=strategy,
        chat_template=chat_template(template, tokenizer),
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=extra,
    )
    assert proc._get_num_multimodal_tokens([(image_size, image_size)])["num_image_tokens"] == [n]
    return proc


def save_hf_export(
    vlm: TinyVLM,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    image_size: int,
    template: str,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    image_preprocess: str = "crop",
) -> ExportInfo:
    """Write the 🤗 export of `vlm` (its LoRA merged in place first) and say which form it took and why."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, TINYMIX_FILES)
    merge_lora(vlm)
    tokenizer = plain_tokenizer(tokenizer)
    set_token_ids(vlm.llm.config, tokenizer)
    was_training = vlm.training
    vlm.eval()
    form, reason, model, err = _pick(vlm, image_size)
    vlm.train(was_training)
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out)
    proc = processor(vlm, tokenizer, form, image_size, template, image_mean, image_std, image_preprocess)
    proc.save_pretrained(out)
    t = get_template(template)
    info = ExportInfo(
        form=form,
        reason=reason,
        max_logit_error=err,
        template=template,
        image_size=image_size,
        n_image_tokens=vlm.n_image_tokens(image_size),
        task_tags=dict(t.task_tags),
        mean_std=[list(proc.image_processor.image_mean), list(proc.image_processor.image_std)],
        image_preprocess=image_preprocess,
    )
    (out / INFO_JSON).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def read_info(export: str | Path) -> ExportInfo:
    """The `tinymix_export.json` of an hf-format export."""
    path = Path(export) / INFO_JSON
    if not path.is_file():
        raise ValueError(f"{export}: not a tinymix hf export ({INFO_JSON} is missing)")
    return ExportInfo(**json.loads(path.read_text()))


def write_export(
    vlm: TinyVLM,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    image_size: int,
    template: str,
    mean_std: tuple[Sequence[float], Sequence[float]],
    format: str = "hf",
    image_preprocess: str = "crop",
) -> ExportInfo:
    """The export in `format`: `hf` (native Llava or the bundle, see `save_hf_export`) or `tinymix` (parts)."""
    if format == "hf":
        return save_hf_export(
            vlm,
            tokenizer,
            out_dir,
            image_size=image_size,
            template=template,
            image_mean=mean_std[0],
            image_std=mean_std[1],
            image_preprocess=image_preprocess,
        )
    if format != "tinymix":
        raise ValueError(f"--format: {format!r} is not hf or tinymix")
    _clear(Path(out_dir), HF_FILES)
    path = save_export(vlm, tokenizer, out_dir, image_size=image_size, image_mean=mean_std[0], image_std=mean_std[1])
    meta = json.loads((path / EXPORT_JSON).read_text())
    meta.update(template=template, mean_std=[list(mean_std[0]), list(mean_std[1])], image_preprocess=image_preprocess)
    (path / EXPORT_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return ExportInfo(
        form="tinymix",
        reason="asked for (--format tinymix): parts for train.model.load_export, not loadable by 🤗 alone",
        max_logit_error=0.0,
        template=template,
        image_size=image_size,
        n_image_tokens=vlm.n_image_tokens(image_size),
        task_tags=dict(get_template(template).task_tags),
        mean_std=[list(mean_std[0]), list(mean_std[1])],
    )
