"""Two CPU ranks (train.launch → torch's elastic agent on 127.0.0.1) with ZeRO-2 in bf16: the ranks split each global
batch, accumulate global_batch / (micro_batch × 2) micro batches, learn, and follow the one-rank run of that batch."""

from __future__ import annotations

import json

import pytest
from test_engine_fixtures import SeededLoader, one_thread, run_here, stage, tiny_vlm, worker  # noqa: F401 - fixture
from test_model_fixtures import train_tokenizer

from mixer.manifest.runtime import DeepSpeedSettings
from train.metrics import batch_counts

STAGE = {"trains": ["connector", "llm"], "steps": 4, "lr": 3e-3, "micro_batch": 1, "global_batch": 4}


@pytest.mark.slow
def test_two_ranks_zero2_bf16(tmp_path, one_thread):  # noqa: F811
    tok = train_tokenizer(tmp_path / "tok")
    spec = {
        "tok_dir": str(tmp_path / "tok"),
        "stage": STAGE,
        "ds": {"zero_stage": 2, "bf16": True},
        "loader": {"seed": 0},
        "run_dir": str(tmp_path / "run"),
    }
    results, log = worker(spec, tmp_path / "ranks", nproc=2)
    assert len(results) == 2, log
    first, second = results
    assert first["grad_accum"] == second["grad_accum"] == 2  # 4 / (1 × 2)
    assert first["served"] == [0, 2, 4, 6, 8, 10, 12, 14]  # rank r reads global micro batches r, r + 2, …
    assert second["served"] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert first["losses"] == second["losses"]  # every rank reports the loss averaged over both
    assert first["losses"][-1] < first["losses"][0] - 0.4

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # rank 0 writes the metrics
    loader = SeededLoader(tok, 4, seed=0, micro_batch=1)
    step_one = [batch_counts(loader.batch(i)) for i in range(4)]  # both ranks' micro batches of step 1
    assert (rows[0]["tokens"], rows[0]["samples"], rows[0]["images"]) == tuple(map(sum, zip(*step_one, strict=True)))

    # One rank accumulating all 4 micro batches of each global batch takes the same steps (bf16 rounding aside).
    vlm = tiny_vlm(tok)
    alone = SeededLoader(tok, vlm.n_image_tokens(32), seed=0, micro_batch=1)
    reference = run_here(vlm, alone, stage(**STAGE), DeepSpeedSettings(zero_stage=2, bf16=True), tmp_path / "one")
    assert alone.served == list(range(16))
    for two, one in zip(first["losses"], reference.losses, strict=True):
        assert two == pytest.approx(one, abs=5e-3)
