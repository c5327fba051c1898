"""One measurement process of bench/export: load an export as `train generate` does, answer the prompts, report.

`python -m bench.export.worker EXPORT MODE PROMPTS.json MAX_NEW_TOKENS` prints one JSON line: peak RSS of this
process (VmHWM), load seconds, generated tokens and seconds, and each answer's token ids. MODE `none` imports
the same libraries and loads nothing: the baseline the other modes' memory is read against.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor

from train.generate import hf_inputs
from train.model.hf_export import BUNDLE
from train.model.hf_load import load_hf
from train.model.hf_quant import weight_bytes

MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "int8": ("fp32", True)}


def peak_rss_mb() -> float:
    """Resident high-water mark of the process (VmHWM), in MB.

    Not ru_maxrss: Linux carries that across execve, so a worker would start from its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB, close enough for macOS


def run(export: str, mode: str, prompts: list[dict], max_new_tokens: int) -> dict:
    if mode == "none":
        return {"mode": mode, "peak_rss_mb": peak_rss_mb()}
    dtype, int8 = MODES[mode]
    start = time.perf_counter()
    model, info = load_hf(export, dtype, int8)
    processor = AutoProcessor.from_pretrained(export, trust_remote_code=info.form == BUNDLE)
    load_s = time.perf_counter() - start
    answers, new_tokens, prompt_tokens, gen_s = [], 0, 0, 0.0
    for i, p in enumerate([prompts[0], *prompts]):  # the first answer warms up (lazy init) and is not counted
        with Image.open(p["image"]) as im:
            inputs = hf_inputs(processor, info, im.convert("RGB"), p["question"], p.get("task"))
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            seconds = time.perf_counter() - t0
        if i == 0:
            continue
        gen_s += seconds
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        answers.append(new)
        new_tokens += len(new)
        prompt_tokens += inputs["input_ids"].shape[1]
    return {
        "mode": mode,
        "peak_rss_mb": peak_rss_mb(),
        "weight_mb": weight_bytes(model) / 2**20,
        "load_s": load_s,
        "gen_s": gen_s,
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens,
        "answers": answers,
    }


if __name__ == "__main__":
    export, mode, prompts, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.manual_seed(0)
    with open(prompts) as f:
        result = run(export, mode, json.load(f), max_new)
    print(json.dumps(result))
