"""The peer: LLaVA's `model_vqa` loop on a tinymix export — one question at a time, batch 1, greedy with a KV cache.

Reads a question file (`{"question_id", "image", "text"}` lines, as `train eval --questions-only` writes it), and for
each line: open the image, render the prompt, `generate` with `max_new_tokens`, decode, append an answers line.
This is what `llava/eval/model_vqa.py` does (its `model.generate(..., do_sample=False, use_cache=True)`), with the
model loaded the way `train eval` loads it, so the two differ only in batching.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from train.evals.model import EvalModel, load_for_eval


def answer_loop(model: EvalModel, questions: list[dict], folder: Path, max_new_tokens: int) -> list[dict]:
    """LLaVA's loop: per question, image → prompt → batch-1 greedy `generate` → decoded answers line."""
    out = []
    with torch.no_grad():
        for q in questions:
            ids = torch.tensor([model.prompt_ids(q["text"])])
            pixels = model.pixels(folder / q["image"])[None]
            if model.hf:  # an hf export: 🤗 generate, as LLaVA's loop calls it
                gen = model.vlm.generate(
                    input_ids=ids, pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False
                )
                new = gen[0, ids.shape[1] :].tolist()
            else:
                new = model.vlm.generate(pixels, ids, max_new_tokens)[0].tolist()
            if model.eos_id in new:
                new = new[: new.index(model.eos_id)]
            text = model.tokenizer.decode(new, skip_special_tokens=True).strip()
            out.append({"question_id": q["question_id"], "prompt": q["text"], "text": text})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--question-file", required=True)
    p.add_argument("--image-folder", required=True)
    p.add_argument("--answers-file", required=True)
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    questions = [json.loads(line) for line in Path(args.question_file).read_text().splitlines()]
    answers = answer_loop(load_for_eval(args.model), questions, Path(args.image_folder), args.max_new_tokens)
    Path(args.answers_file).write_text("".join(json.dumps(a) + "\n" for a in answers))


if __name__ == "__main__":
    main()
