"""Scaffolding for the engine tests: a seeded in-memory StageLoader, a tiny VLM and stage, and a rank worker.

`python test_engine_fixtures.py SPEC.json` runs `run_stage` once on this rank (torchrun starts one per rank) and writes
`OUT/rank<r>.json` with the per-step losses and the global micro-batch indices the rank consumed. The loader is test
scaffolding standing in for the mixer's loader contract, not a mock of it: micro batch `i` of rank `r` is the global
micro batch `i * world + r`, a pure function of (seed, index), so data order is checkable across processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_model_fixtures import model_config, pack, sample, stack_rows, train_tokenizer
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mixer.batch import PackedBatch
from mixer.manifest.runtime import DeepSpeedSettings
from mixer.manifest.stages import StageConfig

IMAGE = 32
ANSWERS = ["a cat on a red mat", "two dogs run", "the bus is yellow", "a small boat"]
PROMPT = "describe the image."


def image_of(cls: int, g: torch.Generator) -> torch.Tensor:
    """A class-coloured image with a little noise: the answer is learnable only through the vision path."""
    base = torch.zeros(3, IMAGE, IMAGE)
    base[cls % 3] = 1.0 if cls < 3 else -1.0
    return base + 0.1 * torch.randn(3, IMAGE, IMAGE, generator=g)


class SeededLoader:
    """Deterministic `PackedBatch` stream honouring the StageLoader contract (position counted in micro batches)."""

    def __init__(
        self,
        tok: Any,
        n_image_tokens: int,
        *,
        seed: int,
        micro_batch: int,
        rank: int = 0,
        world: int = 1,
        poison_at: int | None = None,
        crash_at: int | None = None,
    ) -> None:
        self.tok, self.n, self.seed, self.micro_batch = tok, n_image_tokens, seed, micro_batch
        self.rank, self.world, self.poison_at, self.crash_at = rank, world, poison_at, crash_at
        self.samples = [sample(tok, PROMPT, answer, n_image_tokens) for answer in ANSWERS]
        self.seq_len = 2 * max(len(ids) for ids, _ in self.samples) + 3
        self.position = 0
        self.served: list[int] = []

    def batch(self, index: int) -> PackedBatch:
        """Global micro batch `index`: `micro_batch` rows of two packed samples, classes drawn from (seed, index)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        rows = []
        for _ in range(self.micro_batch):
            classes = torch.randint(0, len(ANSWERS), (2,), generator=g).tolist()
            images = [image_of(c, g) for c in classes]
            rows.append(pack([self.samples[c] for c in classes], images, self.tok, self.n, seq_len=self.seq_len))
        out = stack_rows(rows)
        if index == self.poison_at:
            out["pixel_values"][0, 0, 0, 0] = float("nan")  # a corrupt image: its features and the loss turn NaN
        return out

    def __iter__(self) -> Iterator[PackedBatch]:
        while True:
            if self.position == self.crash_at:
                raise SystemExit(f"simulated kill before micro batch {self.position}")
            index = self.position * self.world + self.rank
            self.position += 1
            self.served.append(index)
            yield self.batch(index)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


class RowLoader(SeededLoader):
    """Micro batch `i` holds rows `i*M … i*M+M-1` of one fixed list, so any (micro batch, ranks) split of a global
    batch reads the same rows. Even rows hold one short answer, odd rows three long ones: label counts differ ~5x."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seq_len = 3 * max(len(ids) for ids, _ in self.samples)

    def row(self, k: int) -> PackedBatch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        classes = [3] if k % 2 == 0 else [0, 0, 0]  # "a small boat" / "a cat on a red mat" three times
        images = [image_of(c, g) for c in classes]
        return pack([self.samples[c] for c in classes], images, self.tok, self.n, seq_len=self.seq_len)

    def batch(self, index: int) -> PackedBatch:
        return stack_rows([self.row(index * self.micro_batch + j) for j in range(self.micro_batch)])


def capture_grads(model: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Record the gradients every optimizer sees at its first step, by parameter name (a global step pre-hook)."""
    names = {id(p): n for n, p in model.named_parameters()}
    store: dict[str, torch.Tensor] = {}

    def hook(opt: Any, args: Any, kwargs: Any) -> None:
        if not store:
            for group in opt.param_groups:
                params = [p for p in group["params"] if p.grad is not None and id(p) in names]  # ZeRO-0: the module's
                store.update({names[id(p)]: p.grad.detach().clone() for p in params})

    return store, register_optimizer_step_pre_hook(hook)


def tiny_vlm(tok: Any, seed: int = 0, llm: str = "llama") -> Any:
    from train.model import build_vlm

    torch.manual_seed(seed)
    return build_vlm(model_config(llm, "mlp2x_gelu"), tok, IMAGE)


def stage(
    trains: list[str],
    *,
    steps: int = 8,
    lr: float = 3e-3,
    micro_batch: int = 1,
    global_batch: int = 2,
    optimizer: dict | None = None,
    **extra: Any,
) -> StageConfig:
    return StageConfig.model_validate(
        {
            "name": "toy",
            "mixture": {"toy": 1},
            "size": {"steps": steps},
            "trains": trains,
            "optimizer": {"lr": lr, "min_lr": lr / 10, "warmup_steps": 1, "weight_decay": 0.01, **(optimizer or {})},
            "micro_batch": micro_batch,
            "global_batch": global_batch,
            **extra,
        }
    )


@pytest.fixture
def one_thread():
    """In-process DeepSpeed runs with one intra-op thread: on a shared 2-core machine more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_here(vlm: Any, loader: Any, st: StageConfig, ds: DeepSpeedSettings, run_dir: Path, **options: Any) -> Any:
    """`run_stage` in this process (rank 0 of 1), checkpoints and metrics under `run_dir`."""
    from train.loop import run_stage

    options.setdefault("resume", False)
    options.setdefault("checkpoint_every", 0)
    return run_stage(
        vlm,
        st,
        ds,
        loader,
        run_dir=run_dir,
        stage_index=0,
        steps=st.steps(),
        metrics_path=run_dir / "metrics.jsonl",
        **options,
    )


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the tokenizer, model and loader of `spec`, run one stage on this rank, return what happened."""
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    tok = train_tokenizer(Path(spec["tok_dir"]))
    vlm = tiny_vlm(tok)
    st = stage(**spec["stage"])
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    kind = RowLoader if spec["loader"].pop("rows", False) else SeededLoader
    loader = kind(tok, vlm.n_image_tokens(IMAGE), micro_batch=st.micro_batch, rank=rank, world=world, **spec["loader"])
    options = {k: spec[k] for k in ("resume", "checkpoint_every") if k in spec}
    grads, hook = capture_grads(vlm) if spec.get("grads") else ({}, None)
    result = run_here(vlm, loader, st, DeepSpeedSettings(**spec["ds"]), Path(spec["run_dir"]), **options)
    if hook is not None:
        hook.remove()
        torch.save(grads, Path(spec["out"]) / f"grads_rank{rank}.pt")
    return {
        "losses": result.losses,
        "start_step": result.start_step,
        "served": loader.served,
        "grad_accum": st.global_batch // (st.micro_batch * dist.get_world_size()),
        "accelerator": get_accelerator().device_name(),
    }


def worker(spec: dict[str, Any], tmp: Path, nproc: int = 1) -> tuple[list[dict[str, Any]], str]:
    """Run `spec` in fresh processes (`nproc` ranks through train.launch); returns each rank's result and the log."""
    out = tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = tmp / "spec.json"
    path.write_text(json.dumps({**spec, "out": str(out)}))
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    program = [__file__, str(path)]
    cmd = (
        [sys.executable, "-m", "train.launch", f"--nproc={nproc}", "--", *program]
        if nproc > 1
        else [sys.executable, *program]
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    log = proc.stdout + proc.stderr
    results = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return results, log


def test_loader_is_deterministic_and_resumes_in_place(tmp_path):
    tok = train_tokenizer(tmp_path)
    a = SeededLoader(tok, 4, seed=3, micro_batch=2, rank=1, world=2)
    first = [next(it) for it in [iter(a)] for _ in range(3)]
    assert a.served == [1, 3, 5]
    b = SeededLoader(tok, 4, seed=3, micro_batch=2, rank=1, world=2)
    b.load_state_dict({"position": 2})
    again = next(iter(b))
    assert b.served == [5]
    for key in first[2]:
        assert torch.equal(first[2][key], again[key])
    assert first[0]["input_ids"].shape == (2, a.seq_len)
    assert first[0]["image_positions"].shape == (4, 2)


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = run(spec)
    rank = int(os.environ.get("RANK", 0))
    (Path(spec["out"]) / f"rank{rank}.json").write_text(json.dumps(out))
