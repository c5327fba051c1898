"""`python -m bench.train.resume_cost`: what re-partitioning ZeRO-2 optimizer state for another rank count costs.

Two ways to resume on another number of ranks: (a) convert the checkpoint once at resume with DeepSpeed's
`ds_to_universal` (what `train.checkpoint` does), or (b) also save the consolidated fp32 weights and Adam moments
(`safe_get_full_fp32_param` / `safe_get_full_optimizer_state`) at every checkpoint. Story: a one-rank ZeRO-2 engine
over a stack of `--layers` 1024×1024 linear layers takes one AdamW step → per round, in this order: DeepSpeed's
`save_checkpoint`, the consolidated save (b) and the conversion (a); medians over `--rounds`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch


def _seconds(f: Callable[[], None]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=24, help="1024x1024 linear layers (24: 25.2M parameters).")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from train.engine import import_deepspeed, init_distributed

    deepspeed = import_deepspeed()
    init_distributed()
    from deepspeed.checkpoint import ds_to_universal
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(args.layers)])
    config = {
        "train_batch_size": 1,
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.backward(engine(torch.randn(1, 1024)).sum())
    engine.step()
    root = Path(tempfile.mkdtemp(prefix="resume_cost_"))
    ckpt = root / "s"

    def consolidated() -> None:
        full = {
            name: {
                "fp32": safe_get_full_fp32_param(p),
                **{k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")},
            }
            for name, p in model.named_parameters()
        }
        torch.save(full, ckpt / "consolidated.pt")

    def universal() -> None:
        shutil.rmtree(ckpt / "universal", ignore_errors=True)
        ds_to_universal.main(
            Namespace(
                input_folder=str(ckpt),
                output_folder=str(ckpt / "universal"),
                num_extract_workers=1,
                num_merge_workers=1,
                keep_temp_folder=False,
                strict=True,
                inject_missing_state=True,
            )
        )

    times: dict[str, list[float]] = {"save_checkpoint": [], "consolidated_save": [], "universal_conversion": []}
    for _ in range(args.rounds):
        times["save_checkpoint"].append(_seconds(lambda: engine.save_checkpoint(str(root), tag="s")))
        times["consolidated_save"].append(_seconds(consolidated))
        times["universal_conversion"].append(_seconds(universal))
    sizes = {
        "checkpoint_mb": sum(f.stat().st_size for f in ckpt.glob("*.pt") if f.name != "consolidated.pt") / 1e6,
        "consolidated_mb": (ckpt / "consolidated.pt").stat().st_size / 1e6,
        "universal_mb": sum(f.stat().st_size for f in (ckpt / "universal").rglob("*") if f.is_file()) / 1e6,
    }
    params = sum(p.numel() for p in model.parameters())
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    print(json.dumps({"params_m": round(params / 1e6, 1), "rounds": args.rounds, **medians, **sizes}))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
