"""Token-exact loss: an optimizer step's gradient is that of (sum of its token losses over every micro batch and rank)
/ (its label tokens), whatever the split. One rank accumulating 4 micro batches, two ranks accumulating 2 each, and
one rank taking the whole global batch at once give the same gradients on rows whose label counts differ ~5x; the
reductions the loop makes live on the model's device, once per step."""

from __future__ import annotations

import pytest
import torch
from test_engine_fixtures import RowLoader, capture_grads, one_thread, run_here, stage, tiny_vlm, worker  # noqa: F401
from test_model_fixtures import train_tokenizer

from mixer.manifest.runtime import DeepSpeedSettings
from train.model.vlm import label_tokens

# fp32 ZeRO-0: the optimizer sees each parameter's whole gradient (no clipping, so nothing rescales it).
DS = {"zero_stage": 0, "bf16": False}
OPT = {"grad_clip": None}


def _grads_one_rank(tok, tmp, micro_batch: int) -> dict[str, torch.Tensor]:
    vlm = tiny_vlm(tok)
    loader = RowLoader(tok, vlm.n_image_tokens(32), seed=0, micro_batch=micro_batch)
    grads, hook = capture_grads(vlm)
    try:
        st = stage(["connector", "llm"], steps=1, micro_batch=micro_batch, global_batch=4, optimizer=OPT)
        run_here(vlm, loader, st, DeepSpeedSettings(**DS), tmp)
    finally:
        hook.remove()
    return grads


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


def test_label_counts_differ_across_the_rows(tmp_path):
    tok = train_tokenizer(tmp_path)
    loader = RowLoader(tok, 4, seed=0, micro_batch=1)
    counts = [label_tokens(loader.batch(i)) for i in range(4)]
    assert counts[0] == counts[2] and counts[1] == counts[3] and counts[1] >= 4 * counts[0] > 0


@pytest.mark.slow
def test_same_gradients_for_1x4_2x2_and_1x1(tmp_path, one_thread):  # noqa: F811
    tok = train_tokenizer(tmp_path / "tok")
    whole = _grads_one_rank(tok, tmp_path / "1x1", micro_batch=4)
    accumulated = _grads_one_rank(tok, tmp_path / "1x4", micro_batch=1)
    _close(accumulated, whole)

    spec = {
        "tok_dir": str(tmp_path / "tok"),
        "stage": {"trains": ["connector", "llm"], "steps": 1, "global_batch": 4, "optimizer": OPT},
        "ds": DS,
        "loader": {"seed": 0, "rows": True},
        "run_dir": str(tmp_path / "2x2"),
        "grads": True,
    }
    results, log = worker(spec, tmp_path / "ranks", nproc=2)
    assert len(results) == 2, log
    assert results[0]["served"] == [0, 2] and results[1]["served"] == [1, 3]
    for rank in (0, 1):  # DeepSpeed averaged the gradients over the ranks: each holds the whole step's
        _close(torch.load(tmp_path / "ranks" / "out" / f"grads_rank{rank}.pt"), whole)


def test_reductions_live_on_the_model_device_once_per_step(tmp_path, one_thread, monkeypatch):  # noqa: F811
    import train.loop as loop

    reduced: list[torch.Tensor] = []

    def spy(t: torch.Tensor) -> torch.Tensor:
        reduced.append(t)
        return t

    monkeypatch.setattr(loop, "all_reduce", spy)
    tok = train_tokenizer(tmp_path / "tok")
    vlm = tiny_vlm(tok)
    loader = RowLoader(tok, vlm.n_image_tokens(32), seed=0, micro_batch=1)
    st = stage(["connector"], steps=3, global_batch=4)
    run_here(vlm, loader, st, DeepSpeedSettings(bf16=False), tmp_path / "run")
    device = next(vlm.parameters()).device
    assert len(reduced) == 2 * 3  # the step's counts, then its losses and non-finite flags: not per micro batch
    assert all(t.device == device for t in reduced)
    assert [tuple(t.shape) for t in reduced[:2]] == [(4,), (5,)]  # 4 counts; 1 loss sum + 4 micro batch flags
