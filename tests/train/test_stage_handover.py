"""What passes between stages and runs: final weights of tied-embedding LLMs, metrics rows after a resume, threads."""

from __future__ import annotations

import json

import pytest
import torch
from test_engine_fixtures import tiny_vlm
from test_model_fixtures import train_tokenizer

from train.metrics import MetricsWriter, StepMetrics
from train.pipeline import _load_final, _save_final, default_threads


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("llm", ["qwen2_tied", "gemma", "qwen2"])
def test_final_weights_of_tied_and_untied_llms_round_trip(tok, tmp_path, llm):
    from train.engine import init_distributed

    init_distributed()
    trained = tiny_vlm(tok, seed=0, llm=llm)
    config = trained.llm.config
    tied = trained.llm.get_output_embeddings().weight is trained.llm.get_input_embeddings().weight
    assert tied == (llm != "qwen2") and config.get_text_config().tie_word_embeddings == tied
    _save_final(trained, tmp_path, {"stage": "s", "lora": None})
    fresh = tiny_vlm(tok, seed=1, llm=llm)
    _load_final(fresh, tmp_path)
    want, got = trained.state_dict(), fresh.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert (fresh.llm.get_output_embeddings().weight is fresh.llm.get_input_embeddings().weight) == tied


def _row(step: int, loss: float) -> StepMetrics:
    return StepMetrics("s", step, loss, 1e-3, None, 10, 2, 2, 0.5, 0.0)


def test_a_resumed_stage_replaces_the_rolled_back_rows(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsWriter(path, total=6, initial=0, enabled=True) as w:
        for step in range(1, 6):
            w.write(_row(step, float(step)))  # killed after step 5; the last checkpoint was step 3
    with path.open("a") as f:
        f.write('{"stage": "s", "step": 6, "lo')  # the kill cut the last line short
    with MetricsWriter(path, total=6, initial=3, enabled=True) as w:
        for step in range(4, 7):
            w.write(_row(step, 10.0 + step))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0), (6, 16.0)]
    with MetricsWriter(path, total=6, initial=0, enabled=True) as w:  # a fresh start of the stage
        w.write(_row(1, 7.0))
    assert [json.loads(line)["loss"] for line in path.read_text().splitlines()] == [7.0]


def test_default_threads_leave_the_loader_workers_their_cores():
    assert default_threads(2, cores=2) == 1
    assert default_threads(2, cores=8) == 6
    assert default_threads(0, cores=4) == 4
    assert default_threads(4, cores=2) == 1
