"""`train generate`: answer a prompt about an image with an exported model, prompted as it was trained.

An hf-format export (the default) runs entirely through 🤗: `AutoProcessor` renders the exported chat template and
expands the image tokens, `AutoModelForImageTextToText` generates greedily — in fp32, bf16 or fp16, optionally with
weight-only int8 (`train.model.hf_quant`). A `--format tinymix` export is reassembled by `load_export` instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor

from train.evals.engine import generate
from train.evals.model import load_for_eval
from train.model.export import EXPORT_JSON
from train.model.hf_export import BUNDLE, INFO_JSON, ExportInfo, read_info
from train.model.hf_load import load_hf


def user_text(info: ExportInfo, prompt: str, task: str | None) -> str:
    """The prompt with the task tag training put in front of it (MiniGPT-v2's `[vqa]`), when the template has one."""
    tag = info.task_tags.get(task or "", "")
    return f"{tag} {prompt}" if tag else prompt


def hf_inputs(processor, info: ExportInfo, image: Image.Image, prompt: str, task: str | None) -> dict:
    """The processor's tensors for one image and question, through the export's own chat template."""
    text = user_text(info, prompt, task)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def answer(
    export: str | Path,
    image: str | Path,
    prompt: str,
    max_new_tokens: int = 32,
    *,
    dtype: str = "fp32",
    int8: bool = False,
    task: str | None = "vqa",
) -> str:
    """The model's greedy answer (special tokens dropped, stripped)."""
    export = Path(export)
    if not (export / INFO_JSON).is_file() and (export / EXPORT_JSON).is_file():
        return _answer_tinymix(export, image, prompt, max_new_tokens)
    model, info = load_hf(export, dtype, int8)
    processor = AutoProcessor.from_pretrained(export, trust_remote_code=info.form == BUNDLE)
    with Image.open(image) as im:
        inputs = hf_inputs(processor, info, im.convert("RGB"), prompt, task)
    with torch.no_grad():
        out = model.generate(**inputs.to(model.device), max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _answer_tinymix(export: Path, image: str | Path, prompt: str, max_new_tokens: int) -> str:
    model = load_for_eval(export)
    pixels = model.pixels(Path(image))[None]
    out = generate(model, [model.prompt_ids(prompt)], pixels, max_new_tokens)[0]
    return model.tokenizer.decode(out, skip_special_tokens=True).strip()


def usage_hint(export: str | Path) -> str:
    """How to use an export: `train generate`, and the `pipeline(...)` call with 🤗 alone (the demo's last line)."""
    export = str(export)
    try:
        remote = read_info(export).form == BUNDLE
    except ValueError:
        return f"train generate {export} --image IMG --prompt '…'"
    trust = ", trust_remote_code=True" if remote else ""
    return (
        f"train generate {export} --image IMG --prompt '…'   or, with 🤗 alone:\n"
        f'    pipe = transformers.pipeline("image-text-to-text", model="{export}"{trust})\n'
        '    pipe(text=[{"role": "user", "content": [{"type": "image", "image": "IMG.jpg"}, '
        '{"type": "text", "text": "What is in the image?"}]}], max_new_tokens=32, return_full_text=False)'
    )
