"""The manifest's `eval:` section: validated by name, and run after a stage into RUN/eval and the metrics JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_eval_run import SIZE, data_root, export  # noqa: F401  (module fixtures: the native-layout benchmarks)

from mixer.manifest import ManifestError, load_manifest
from train.evals import load_for_eval
from train.evals.stage import after_stage

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo.yaml"
TOWER = {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
TOWER |= {"num_attention_heads": 4, "image_size": 64, "patch_size": 16}


def _manifest(tmp_path: Path, eval_section: dict, root: Path):
    path = tmp_path / "m.yaml"
    # the demo manifest with this eval: section in place of its own (extends would merge the two), and an inline
    # tower in place of the one `make demo` trains into its corpus folder
    doc = yaml.safe_load(DEMO.read_text()) | {"data_root": str(root), "output": str(tmp_path / "out")}
    doc["eval"] = eval_section
    doc["model"]["vision"] = {"config": TOWER, "feature_layer": -1}
    path.write_text(yaml.safe_dump(doc))
    return load_manifest(path, check_paths=False)


def test_unknown_benchmark_is_named_by_its_field(tmp_path):
    with pytest.raises(ManifestError) as e:
        _manifest(tmp_path, {"benchmarks": {"gqa": {}, "pope2": {"limit": 3}}}, tmp_path)
    assert any("eval.benchmarks" in p and "unknown benchmark 'pope2'" in p for p in e.value.problems)
    with pytest.raises(ManifestError) as e:
        _manifest(tmp_path, {"benchmarks": {"gqa": {"limit": 0}}}, tmp_path)
    assert any("eval.benchmarks.gqa.limit" in p for p in e.value.problems)


def test_after_stage_writes_answers_and_appends_scores_to_the_metrics(tmp_path, export, data_root):  # noqa: F811
    section = {"data_root": ".", "benchmarks": {"gqa": {"limit": 3}, "pope": {"likelihood": True}}, "batch": 4}
    m = _manifest(tmp_path, section, data_root)
    model = load_for_eval(export)
    model.vlm.train()
    runs = tmp_path / "run"
    metrics = runs / "metrics" / "3-instruction.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"stage": "instruction", "step": 1, "loss": 2.0}) + "\n")  # a training step line
    torch.manual_seed(0)
    scores = after_stage(m, model.vlm, model.tokenizer, 2, runs, step=7)
    assert model.vlm.training  # handed back in the mode it came in
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert lines[0]["loss"] == 2.0 and lines[1] == {"stage": "instruction", "step": 7, "eval": scores}
    out = runs / "eval" / "3-instruction"
    assert json.loads((out / "scores.json").read_text()) == scores
    assert scores["gqa"]["n"] == 3 and scores["pope"]["n"] == 9
    card = json.loads((out / "card.json").read_text())
    assert card["model"]["template"] == m.stages[2].template == "tinygptv"
    assert card["benchmarks"]["gqa"]["limit"] == 3 and card["benchmarks"]["pope"]["mode"] == "likelihood"
    pope_card, gqa_card = card["benchmarks"]["pope"], card["benchmarks"]["gqa"]
    assert "lower case" in pope_card["likelihood_spellings"] and "likelihood_spellings" not in gqa_card
    pope = [json.loads(x) for x in (out / "pope" / "answers.jsonl").read_text().splitlines()]
    assert {x["text"] for x in pope} <= {"Yes", "No"}


def test_no_eval_section_does_nothing(tmp_path, export):  # noqa: F811
    m = load_manifest(DEMO, check_paths=False).model_copy(update={"eval": None})  # the demo itself has an eval:
    model = load_for_eval(export)
    assert after_stage(m, model.vlm, model.tokenizer, 0, tmp_path / "run", step=1) is None
    assert not (tmp_path / "run").exists()


def test_size_is_the_stage_image_size(tmp_path, export, data_root):  # noqa: F811
    m = _manifest(tmp_path, {"data_root": ".", "benchmarks": {"gqa": {"limit": 1}}}, data_root)
    model = load_for_eval(export)
    after_stage(m, model.vlm, model.tokenizer, 3, tmp_path / "run", step=1)
    card = json.loads((tmp_path / "run" / "eval" / "4-multitask" / "card.json").read_text())
    assert card["model"]["image_size"] == m.stages[3].image_size == 64 != SIZE


def test_a_proxy_scores_the_eval_benchmarks_as_a_stage_does_and_a_fit_can_target_them(tmp_path, export, data_root):  # noqa: F811
    from mixer.ablate import VariantResult
    from mixer.planning import stage_contract
    from train.proxy import benchmark_scores

    m = _manifest(tmp_path, {"data_root": ".", "benchmarks": {"pope": {"likelihood": True}}, "batch": 4}, data_root)
    model = load_for_eval(export)
    stage = m.stages[2]
    sources = {s: f"unused/{s}" for s in stage.mixture}
    contract = stage_contract(stage, m.model, sources, sources, num_sequences=8, index=2)
    proxy = benchmark_scores(m, model.vlm, model.tokenizer, contract, tmp_path / "proxy-eval")
    after = after_stage(m, model.vlm, model.tokenizer, 2, tmp_path / "run", step=1)  # the same scorer, same prompt
    assert proxy == after and proxy["pope"]["n"] == 9
    result = VariantResult("v", {"llava": 1.0}, "ok", scores=proxy)
    assert result.score("pope.mean_f1") == -proxy["pope"]["mean_f1"]  # fits minimise: a score is negated
    assert result.score("pope.nope") is None and result.score("gqa.accuracy") is None
