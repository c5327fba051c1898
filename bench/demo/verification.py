"""How long a from-scratch LLM of the demo's shape takes to learn a POPE-style yes/no question, in token terms.

`python -m bench.demo.verification [--steps 1500] [--batch 32] [--lr 1e-3]`

Why: the demo model answers its POPE file at 50% after every stage, with images and with them shuffled. A yes / no
"is X among these?" question is an interaction of two inputs (the asked object and the seen ones): neither alone says
anything about the answer, so gradient descent has no first-order signal and sits on a plateau until an attention
head matches the two. A pretrained LLM brings that circuit; the demo's LLM starts from random weights.

What it measures: the demo's LLM (🤗 llama, 128 wide, 2 layers, 4 heads) trained on synthetic token sequences

    [prefix filler] o1 o2 (o3) [SEP] [Q] x [suffix filler] -> YES | NO      (x in {o1, o2, o3} half the time)

with objects of one token (POPE's "dog") or of two (the demo's "red circle", negatives half the time the swapped
bindings), and a suffix of filler tokens between the asked object and the answer (the demo's POPE prompt has about
a dozen: " in the image?", the template's "[/INST]", the answer's leading space). Per setting, the first step at which
held-out accuracy reaches 90%, or "—" when it did not within --steps. Synthetic ids, no tokenizer, no images: the
plateau itself, without the vision tower's share of the difficulty.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mixer.manifest import load_manifest

SEP, Q, YES, NO = 1, 2, 3, 4
COLOURS, SHAPES = list(range(10, 16)), list(range(20, 23))
PREFIX, SUFFIX = 30, 60  # first filler ids
DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo.yaml"


def _sequence(rng: random.Random, two_token: bool, prefix: int, suffix: int) -> tuple[list[int], int]:
    k = rng.randint(2, 3)
    colours, shapes = rng.sample(COLOURS, k), rng.sample(SHAPES, k)
    present = [(c, s) for c, s in zip(colours, shapes, strict=True)] if two_token else [(c,) for c in colours]
    if rng.random() < 0.5:
        asked = rng.choice(present)
    elif two_token and rng.random() < 0.5:  # a swapped binding: both words are in the scene, not together
        a, b = rng.sample(range(k), 2)
        asked = (colours[a], shapes[b])
    else:
        pool = [(c, s) for c in COLOURS for s in SHAPES] if two_token else [(c,) for c in COLOURS]
        asked = rng.choice([o for o in pool if o not in present])
    ids = list(range(PREFIX, PREFIX + prefix)) + [t for o in present for t in o] + [SEP, Q, *asked]
    ids += list(range(SUFFIX, SUFFIX + suffix))
    return ids, YES if asked in present else NO


def _batch(
    rng: random.Random, n: int, two_token: bool, prefix: int, suffix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [_sequence(rng, two_token, prefix, suffix) for _ in range(n)]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r, _ in rows])  # left-padded: the answer slot is the last
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r, _ in rows])[:, None]).long()
    return ids, mask, torch.tensor([a for _, a in rows])


def demo_llm() -> dict:
    """The LLM config of the demo manifest (a llama: its shape is what the plateau is measured on)."""
    llm = load_manifest(DEMO, check_paths=False).model.llm.config or {}
    if llm.get("model_type") != "llama":
        raise SystemExit(f"{DEMO}: the bench builds a llama; the demo's LLM is {llm.get('model_type')}")
    return llm


def steps_to_learn(two_token: bool, prefix: int, suffix: int, args: argparse.Namespace) -> tuple[int | None, float]:
    """(first step with held-out accuracy >= 90%, or None; seconds)."""
    torch.manual_seed(args.seed)
    shape = {k: v for k, v in demo_llm().items() if k != "model_type"} | {"vocab_size": 128}
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    model = LlamaForCausalLM(LlamaConfig(**shape))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng, held_rng = random.Random(args.seed), random.Random(args.seed + 1)
    held = _batch(held_rng, 512, two_token, prefix, suffix)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids, mask, answers = _batch(rng, args.batch, two_token, prefix, suffix)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        loss = torch.nn.functional.cross_entropy(logits[:, -1], answers)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                ids, mask, answers = held
                pos = (mask.cumsum(1) - 1).clamp(min=0)
                pred = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1, [YES, NO]].argmax(-1)
            if (pred == (answers == NO).long()).float().mean().item() >= 0.9:
                return step, time.perf_counter() - start
    return None, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=50, help="held-out check every N steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suffixes", default="0,4,12")
    ap.add_argument("--objects", default="1,2", help="words per object to run: 1, 2 or both")
    ap.add_argument("--layers", type=int, default=0, help="LLM layers instead of the demo's")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'object':<8} {'suffix':>6} {'steps to 90%':>13} {'seconds':>8}")
    for two_token in (n == "2" for n in args.objects.split(",")):
        for suffix in (int(s) for s in args.suffixes.split(",")):
            step, secs = steps_to_learn(two_token, prefix=20, suffix=suffix, args=args)
            label = "2 words" if two_token else "1 word"
            print(f"{label:<8} {suffix:>6} {step if step else '—':>13} {secs:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
