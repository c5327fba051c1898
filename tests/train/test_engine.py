"""One-rank DeepSpeed runs of the tiny VLM on the CPU: ZeRO-2 and ZeRO-3 in bf16 learn the toy task, metrics and
checkpoint rotation are exact, a NaN stops the run naming the last good checkpoint, and resume is exact in fp32."""

from __future__ import annotations

import json

import pytest
import torch
from test_engine_fixtures import SeededLoader, one_thread, run_here, stage, tiny_vlm, worker  # noqa: F401 - fixture
from test_model_fixtures import train_tokenizer

from mixer.manifest.runtime import DeepSpeedSettings
from train.checkpoint import checkpoint_dir, saved_steps
from train.loop import NonFiniteLossError
from train.metrics import batch_counts
from train.schedule import lr_factor


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    return train_tokenizer(tok_dir)


def _loss_on(vlm, batch) -> float:
    with torch.no_grad():
        return float(vlm.eval()(batch).loss)


def test_zero2_bf16_learns_and_logs_every_step(tok, tmp_path, one_thread):  # noqa: F811
    vlm = tiny_vlm(tok)
    loader = SeededLoader(tok, vlm.n_image_tokens(32), seed=0, micro_batch=1)
    probe = loader.batch(1000)
    before = _loss_on(vlm, probe)
    st = stage(["connector", "llm"], steps=8, lr=3e-3, global_batch=2)
    result = run_here(vlm, loader, st, DeepSpeedSettings(zero_stage=2, bf16=True), tmp_path, checkpoint_every=2)

    assert (result.start_step, result.steps_done, len(result.losses)) == (0, 8, 8)
    assert result.losses[-1] < result.losses[0] - 0.5
    assert _loss_on(vlm, probe) < before - 0.5  # the released fp32 weights carry what was learned
    assert loader.served == list(range(16))  # grad accumulation 2 × 8 steps, in order

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows] == result.losses
    for r in rows:
        factor = lr_factor(r["step"] - 1, warmup=1, total=8, min_ratio=0.1)
        assert r["lr"] == pytest.approx(3e-3 * factor, rel=1e-9)  # the lr this step's update used
        counts = [batch_counts(loader.batch(i)) for i in (2 * r["step"] - 2, 2 * r["step"] - 1)]
        assert (r["tokens"], r["samples"], r["images"]) == tuple(map(sum, zip(*counts, strict=True)))
        assert r["samples"] == 4 and r["images"] == 4  # two packed samples per row, one image each
        assert r["grad_norm"] > 0 and r["rss_mb"] > 0 and 0 <= r["loader_wait_s"] <= r["step_time_s"]
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_time_s"])
    assert saved_steps(checkpoint_dir(tmp_path, 0, "toy")) == [6, 8]  # keep_last=2 of 2, 4, 6, 8
    assert result.checkpoint == checkpoint_dir(tmp_path, 0, "toy") / "step0000008"


def test_zero3_bf16_one_rank_with_checkpointing(tok, tmp_path, one_thread):  # noqa: F811
    vlm = tiny_vlm(tok)
    loader = SeededLoader(tok, vlm.n_image_tokens(32), seed=0, micro_batch=1)
    probe = loader.batch(1000)
    before = _loss_on(vlm, probe)
    ds = DeepSpeedSettings(zero_stage=3, bf16=True, gradient_checkpointing=True)
    result = run_here(vlm, loader, stage(["connector", "llm"], steps=6, lr=3e-3), ds, tmp_path)
    assert result.losses[-1] < result.losses[0] - 0.5
    assert vlm.llm.is_activation_checkpointing and not vlm.vision.model.is_activation_checkpointing
    # ZeRO-3 partitions parameters; the release gathers the fp32 masters back into whole tensors ...
    assert all(p.dtype == torch.float32 and p.numel() > 0 for p in vlm.parameters())
    assert not any(hasattr(p, "ds_id") for p in vlm.parameters())
    # ... exactly what DeepSpeed's own zero_to_fp32 reconstructs from the stage-end checkpoint.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    saved = get_fp32_state_dict_from_zero_checkpoint(str(result.checkpoint.parent), tag=result.checkpoint.name)
    assert saved.keys() == dict(vlm.named_parameters()).keys()
    assert all(torch.equal(saved[name], p) for name, p in vlm.named_parameters())
    assert _loss_on(vlm, probe) < before - 0.5


def test_nan_loss_stops_naming_the_last_good_checkpoint(tok, tmp_path, one_thread):  # noqa: F811
    vlm = tiny_vlm(tok)
    # Micro batch 5 is the second of step 3 (grad accumulation 2); checkpoints every 2 steps.
    loader = SeededLoader(tok, vlm.n_image_tokens(32), seed=0, micro_batch=1, poison_at=5)
    with pytest.raises(NonFiniteLossError) as err:
        run_here(
            vlm, loader, stage(["connector"], steps=6), DeepSpeedSettings(bf16=False), tmp_path, checkpoint_every=2
        )
    good = checkpoint_dir(tmp_path, 0, "toy") / "step0000002"
    assert str(err.value) == (
        f"stage toy: non-finite loss at step 3, micro batch 2 (1 of 1 ranks); last good checkpoint: {good}"
    )
    assert saved_steps(checkpoint_dir(tmp_path, 0, "toy")) == [2]


@pytest.mark.slow
def test_resume_is_exact_in_fp32(tok, tok_dir, tmp_path, one_thread):  # noqa: F811
    ds = DeepSpeedSettings(zero_stage=2, bf16=False)
    st = stage(["connector", "lora"], steps=6, lora={"r": 4, "alpha": 8, "dropout": 0.1})  # dropout draws RNG
    vlm = tiny_vlm(tok)
    whole = SeededLoader(tok, vlm.n_image_tokens(32), seed=4, micro_batch=1)
    reference = run_here(vlm, whole, st, ds, tmp_path / "whole")

    # Killed while fetching the first micro batch of step 4, right after the step-3 checkpoint ...
    vlm = tiny_vlm(tok)
    killed = SeededLoader(tok, vlm.n_image_tokens(32), seed=4, micro_batch=1, crash_at=6)
    with pytest.raises(SystemExit, match="simulated kill"):
        run_here(vlm, killed, st, ds, tmp_path / "run", checkpoint_every=3)
    assert saved_steps(checkpoint_dir(tmp_path / "run", 0, "toy")) == [3]

    # ... then a fresh process resumes it (without DS_ACCELERATOR: it must pick the CPU accelerator itself).
    spec = {
        "tok_dir": str(tok_dir),
        "stage": {"trains": ["connector", "lora"], "steps": 6, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
        "ds": {"zero_stage": 2, "bf16": False},
        "loader": {"seed": 4},
        "run_dir": str(tmp_path / "run"),
        "resume": True,
        "checkpoint_every": 3,
    }
    results, log = worker(spec, tmp_path / "fresh")
    assert len(results) == 1, log[-3000:]
    (resumed,) = results
    assert resumed["accelerator"] == ("cuda" if torch.cuda.is_available() else "cpu"), log
    assert resumed["start_step"] == 3
    assert resumed["served"] == whole.served[6:]  # the same data order
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows][3:] == resumed["losses"]
    torch.testing.assert_close([r["loss"] for r in rows], reference.losses, atol=1e-6, rtol=0)
