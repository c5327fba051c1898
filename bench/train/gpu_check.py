"""`python bench/train/gpu_check.py`: the training checks only a CUDA machine can run, one line each.

(a) packed-flash: a tiny VLM under flash-attention 2 gives each sample of a packed micro batch (flattened to one row
with `cu_seq_lens`) the logits it gets alone; (b) nccl: two ranks over NCCL train a few ZeRO-2 bf16 steps and agree
on every loss; (c) throughput: tokens/s and MFU of a Phi-2-size LLM (2.7B, hidden 2560, 32 layers) with a CLIP-L/14
tower in bf16, fed by the real `StageLoader` from the demo corpus (written into `--work` when absent).

Self-contained: nothing to download, no test fixtures; run it from anywhere with the project's Python. Exit code 0
when every check that could run passed; on a machine without CUDA it prints "no GPU" and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: the repository's packages come first
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

TINY_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 16,
}
TINY_LLM = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
# Phi-2's shape (microsoft/phi-2 config.json) and CLIP ViT-L/14 at 224 px: 256 image tokens.
PHI2 = {
    "model_type": "phi",
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "partial_rotary_factor": 0.4,
    "max_position_embeddings": 2048,
}
CLIP_L14 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}
SENTENCES = ["a cat on a red mat", "two dogs run in the park", "the bus is yellow", "what colour is the sign?"] * 50


def say(name: str, status: str, detail: str) -> None:
    print(f"{name}: {status} — {detail}", flush=True)


def tokenizer(work: Path) -> Any:
    from mixer.tokenizer import load_tokenizer, train_tokenizer

    path = work / "tokenizer"
    if not (path / "tokenizer.json").exists():
        train_tokenizer(SENTENCES, path, vocab_size=400)
    return load_tokenizer(str(path))


def tiny_config(tok_dir: Path, attn: str) -> Any:
    from mixer.manifest.model import ModelConfig

    return ModelConfig.model_validate(
        {
            "vision": {"config": TINY_VISION},
            "connector": {"type": "mlp2x_gelu"},
            "llm": {"config": TINY_LLM, "attn_implementation": attn},
            "tokenizer": str(tok_dir),
        }
    )


def segments(tok: Any, n_image_tokens: int) -> list[Any]:
    """Three samples of different lengths: image tokens, a prompt, an answer that carries the loss."""
    from mixer.batch import IGNORE_INDEX, IMAGE_TOKEN
    from mixer.loader.pack import Segment

    image = [tok.convert_tokens_to_ids(IMAGE_TOKEN)] * n_image_tokens
    out = []
    for prompt, answer in [("describe", "a cat on a red mat"), ("where", "in the park"), ("what", "the bus is yellow")]:
        p = image + tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append(Segment(p + a, [IGNORE_INDEX] * len(p) + a, image_starts=[0]))
    return out


def batch_of(rows: list[list[Any]], seq_len: int, tok: Any, seed: int) -> Any:
    """A loader-format `PackedBatch` of `rows` of segments, with seeded uint8 images."""
    from mixer.loader.images import CLIP_MEAN_STD
    from mixer.loader.pack import pack_batch

    n = sum(len(s.image_starts) for r in rows for s in r)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return pack_batch(rows, seq_len, tok.pad_token_id, pixels, CLIP_MEAN_STD)


# ---- (a) packed flash-attention == each sample alone


def check_flash(work: Path, tok: Any) -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        say("packed-flash", "skipped", "flash-attn is not installed (pip install flash-attn --no-build-isolation)")
        return True
    from mixer.batch import normalize_pixels
    from train.model import build_vlm

    torch.manual_seed(0)
    vlm = build_vlm(tiny_config(work / "tokenizer", "flash_attention_2"), tok, 32).to("cuda", torch.bfloat16).eval()
    segs = segments(tok, vlm.n_image_tokens(32))
    seq_len = len(segs[0]) + len(segs[1]) + 3  # row 0: samples 1, 2 and padding; row 1: sample 3 and padding
    packed = normalize_pixels(batch_of([segs[:2], segs[2:]], seq_len, tok, 0), "cuda", torch.bfloat16)
    worst = 0.0
    with torch.no_grad():
        logits = vlm.logits(packed).float()
        where = [(0, 0), (0, len(segs[0])), (1, 0)]
        images = packed["pixel_values"]
        for i, ((row, start), seg) in enumerate(zip(where, segs, strict=True)):
            alone = batch_of([[seg]], len(seg), tok, 0)
            alone = normalize_pixels(alone, "cuda", torch.bfloat16)
            alone["pixel_values"] = images[i : i + 1]
            ref = vlm.logits(alone).float()[0]
            worst = max(worst, float((logits[row, start : start + len(seg)] - ref).abs().max()))
    ok = worst <= 3e-2  # bf16: one rounding of logits of magnitude ~1
    say("packed-flash", "ok" if ok else "FAILED", f"max |packed - alone| logit difference {worst:.2e} (bf16, tol 3e-2)")
    return ok


# ---- (b) two ranks over NCCL


class ListLoader:
    """A rank's micro batches of a fixed global sequence (global micro batch `i * world + rank`)."""

    def __init__(self, tok: Any, n_image_tokens: int, rank: int, world: int) -> None:
        self.tok, self.segs = tok, segments(tok, n_image_tokens)
        self.rank, self.world, self.position = rank, world, 0
        self.seq_len = sum(len(s) for s in self.segs)

    def __iter__(self) -> Iterator[Any]:
        while True:
            index = self.position * self.world + self.rank
            self.position += 1
            rows = [self.segs[index % 3 :]]  # 3, 2 or 1 samples: label counts differ
            yield batch_of(rows, self.seq_len, self.tok, index)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def rank_worker(spec_path: Path) -> int:
    """One rank of check (b): train 4 ZeRO-2 bf16 steps on the GPU of LOCAL_RANK, write the losses."""
    from mixer.manifest.runtime import DeepSpeedSettings
    from mixer.manifest.stages import StageConfig
    from mixer.tokenizer import load_tokenizer
    from train.engine import init_distributed
    from train.loop import run_stage
    from train.model import build_vlm

    spec = json.loads(spec_path.read_text())
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    rank, world = init_distributed()
    tok = load_tokenizer(spec["tokenizer"])
    torch.manual_seed(0)
    vlm = build_vlm(tiny_config(Path(spec["tokenizer"]), "auto"), tok, 32)
    stage = StageConfig.model_validate(
        {
            "name": "nccl",
            "mixture": {"toy": 1},
            "size": {"steps": 4},
            "trains": ["connector", "llm"],
            "optimizer": {"lr": 1e-3, "warmup_steps": 1},
            "micro_batch": 1,
            "global_batch": 2 * world,
        }
    )
    result = run_stage(
        vlm,
        stage,
        DeepSpeedSettings(zero_stage=2, bf16=True, gradient_checkpointing=False),
        ListLoader(tok, vlm.n_image_tokens(32), rank, world),
        run_dir=spec["out"],
        stage_index=0,
        steps=4,
        resume=False,
        checkpoint_every=0,
        metrics_path=Path(spec["out"]) / "metrics.jsonl",
    )
    (Path(spec["out"]) / f"rank{rank}.json").write_text(json.dumps({"losses": result.losses}))
    return 0


def check_nccl(work: Path) -> bool:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        say("nccl", "skipped", f"needs 2 GPUs, this machine has {gpus}")
        return True
    out = work / "nccl"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    spec = out / "spec.json"
    spec.write_text(json.dumps({"tokenizer": str(work / "tokenizer"), "out": str(out)}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "train.launch", "--nproc=2", "--", __file__, "--rank-worker", str(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    results = [json.loads(p.read_text())["losses"] for p in sorted(out.glob("rank*.json"))]
    finite = all(x == x and abs(x) != float("inf") for r in results for x in r)
    ok = proc.returncode == 0 and len(results) == 2 and results[0] == results[1] and finite
    detail = (
        f"2 ranks, 4 steps, losses {[round(x, 4) for x in results[0]]}" if ok else (proc.stderr or proc.stdout)[-2000:]
    )
    say("nccl", "ok" if ok else "FAILED", detail)
    return ok


# ---- (c) tokens/s and MFU of a Phi-2-size model with the real loader


def corpus(work: Path) -> tuple[Path, Path]:
    """The demo corpus and its tokenizer: the repository's `demo-data` when built, else written into `work`."""
    from mixer.demo import write_demo_corpus
    from mixer.tokenizer import train_tokenizer

    data = ROOT / "demo-data"
    if not (data / "tokenizer" / "tokenizer.json").exists():
        data = work / "demo-data"
        if not (data / "tokenizer" / "tokenizer.json").exists():
            write_demo_corpus(data, base_url="http://127.0.0.1:9", seed=0)  # local-image sources only are used
            texts = (data / "tokenizer_corpus.txt").read_text().splitlines()
            train_tokenizer(texts, data / "tokenizer", vocab_size=2000)
    return data, data / "tokenizer"


def check_throughput(work: Path, args: argparse.Namespace) -> bool:
    import yaml

    from bench.train.run import DEMO, DEMO_STAGE, build_sources, loader_run, make_trainer, peak_tflops, plan_stage
    from mixer.manifest import load_manifest

    data, tok_dir = corpus(work)
    demo = yaml.safe_load(DEMO.read_text())
    stage = copy.deepcopy(next(s for s in demo["stages"] if s["name"] == DEMO_STAGE))
    full = args.trains == "full"
    stage.update(
        name="phi2-size",
        size={"steps": args.warmup + args.steps},
        seq_len=args.seq_len,
        image_size=224,
        micro_batch=args.micro_batch,
        trains=["connector", "llm"] if full else ["connector", "lora"],
        optimizer={"lr": 2e-5, "warmup_steps": 1},
    )
    if not full:
        stage["lora"] = {"r": 64, "alpha": 16, "dropout": 0.05}  # TinyGPT-V's stages 2-4
    out = work / "out"
    manifest = {
        "name": "gpu-check-phi2",
        "output": str(out),
        "data_root": str(data),
        "sources": {name: demo["sources"][name] for name in stage["mixture"]},
        "shards": {**demo["shards"], "image": {**demo["shards"]["image"], "size": 224}},
        "model": {
            "vision": {"config": CLIP_L14},
            "connector": {"type": "mlp2x_gelu"},
            "llm": {"config": PHI2, "attn_implementation": "auto"},
            "tokenizer": str(tok_dir),
        },
        "stages": [stage],
        "deepspeed": {"zero_stage": 2, "bf16": True, "gradient_checkpointing": True},
    }
    path = work / "phi2.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    m = load_manifest(path)
    build_sources(m, str(out))
    plan_stage(m, str(out))
    tr = make_trainer(path, total_steps=args.warmup + args.steps)
    timed = loader_run(tr, str(out), args.workers, args.warmup, args.steps)
    llm = tr.engine.module.llm
    llm_params = sum(p.numel() for p in llm.parameters())
    # Model FLOPs per token: the LLM's forward (2N) and activation gradients (2N) always; weight gradients (2 per
    # trained parameter) only where it trains; attention scores 12·L·h·s (PaLM, App. B). The tower's FLOPs, per
    # image rather than per token, are left out, so the MFU is a lower bound.
    per_token = 4.0 * llm_params + 2.0 * tr.trainable + 12.0 * tr.layers * tr.hidden * tr.stage.seq_len
    peak = args.peak_tflops or peak_tflops(torch.cuda.get_device_name())
    flops = per_token * timed.tokens_per_s
    mfu = f"{100 * flops / (peak * 1e12):.1f}% of {peak:g} TFLOP/s" if peak else "n/a (unknown GPU: --peak-tflops)"
    say(
        "throughput",
        "ok",
        f"{torch.cuda.get_device_name()}: {timed.tokens_per_s:,.0f} tokens/s, {timed.step_ms:,.0f} ms/step, "
        f"MFU {mfu} (LLM {llm_params / 1e9:.2f}B, trains {args.trains}, seq_len {tr.stage.seq_len}, "
        f"micro batch {tr.stage.micro_batch}, loader waited {timed.wait_s:.1f} s)",
    )
    return True


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "gpu_check", help="Scratch folder.")
    p.add_argument("--trains", choices=("lora", "full"), default="lora", help="(c): LoRA fits 24 GB; full ~60 GB.")
    p.add_argument("--seq-len", type=int, default=2048, help="(c): tokens per packed sequence.")
    p.add_argument("--micro-batch", type=int, default=2, help="(c): sequences per micro batch.")
    p.add_argument("--warmup", type=int, default=2, help="(c): untimed steps.")
    p.add_argument("--steps", type=int, default=5, help="(c): timed steps.")
    p.add_argument("--workers", type=int, default=4, help="(c): loader worker processes.")
    p.add_argument("--peak-tflops", type=float, default=None, help="(c): the GPU's dense bf16 peak, if not known.")
    p.add_argument("--rank-worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.rank_worker is not None:
        return rank_worker(args.rank_worker)
    if not torch.cuda.is_available():
        print("gpu_check: no GPU (torch.cuda.is_available() is False): nothing to check here", flush=True)
        return 0
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(work)
    results = [check_flash(work, tok), check_nccl(work), check_throughput(work, args)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
