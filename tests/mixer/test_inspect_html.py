"""`OUT/report.html` and the ablation report, rendered in headless Chromium: not blank, and the tables there.

The build is the loader tests' real one (shards, length index with token files, a plan), with a training run's
metrics written by `train.metrics.MetricsWriter`, a sweep written by `mixer.ablate.write_report` and an eval
`scores.json` in the form `train eval` writes; `mixer inspect` writes the page.
"""

from __future__ import annotations

import json
import shutil

import pytest
from headless import assert_not_blank, render, tables_of
from test_ablate_report import grid_results
from test_loader_fixtures import built_stage
from typer.testing import CliRunner

from mixer.ablate import write_report
from mixer.cli import app
from mixer.inspect import inspect_build
from train.metrics import MetricsWriter, StepMetrics

LOSSES = [5.0, 4.25, 3.5, 3.0]
SCORES = {"gqa": {"accuracy": 0.3125}, "pope": {"random": {"f1": 0.5}, "mean_f1": 0.5}}


@pytest.fixture(scope="module")
def build(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("html") / "out"
    shutil.copytree(built_stage(tmp_path_factory, tiny_tokenizer), out)
    with MetricsWriter(out / "run" / "metrics" / "1-s1.jsonl", total=4, initial=0, enabled=True) as w:
        for step, loss in enumerate(LOSSES):
            w.write(StepMetrics("s1", step, loss, 1e-3, 1.0, 100, 4, 3, 0.5, 0.01, memory={}))
    with (out / "run" / "metrics" / "1-s1.jsonl").open("a") as f:  # the eval row train.evals.stage appends
        f.write(json.dumps({"stage": "s1", "step": 4, "eval": {"gqa": {"accuracy": 0.25}}}) + "\n")
    write_report("grid", grid_results(), out / "ablations" / "grid", varied="ocr")
    (out / "run" / "eval" / "1-s1").mkdir(parents=True)
    (out / "run" / "eval" / "scores.json").write_text(json.dumps(SCORES))
    (out / "run" / "eval" / "1-s1" / "scores.json").write_text(json.dumps({"gqa": {"accuracy": 0.25}}))
    (out / "run" / "eval" / "gqa").mkdir()  # train eval's per-benchmark copy: not a stage's
    (out / "run" / "eval" / "gqa" / "scores.json").write_text(json.dumps(SCORES["gqa"]))
    return out


def by_first_cell(table: list[list[str]]) -> dict[str, list[str]]:
    return {r[0]: r for r in table[1:]}


def test_build_report_renders_with_every_table(build, tmp_path):
    res = CliRunner().invoke(app, ["inspect", str(build), "--no-plots"])
    assert res.exit_code == 0, res.output
    page = build / "report.html"
    assert f"report: {page}" in res.stdout
    assert "src='http" not in page.read_text() and "href=" not in page.read_text()  # self-contained
    shot, dom = render(page, tmp_path)
    assert shot.shape[:2] == (2000, 1200)
    assert_not_blank(shot)
    parsed = tables_of(dom)
    report = inspect_build(build)
    tables = {t[0][0] + "|" + t[0][1]: t for t in parsed.tables}
    mixture = by_first_cell(tables["source|declared"])
    for name, s in report["stages"]["s1"]["sources"].items():
        assert mixture[name][6:8] == [str(s["samples"]), str(s["tokens"])]
    audit = by_first_cell(tables["source|tokenised"])
    for name, a in report["audit"]["s1"]["sources"].items():
        assert audit[name][1] == f"{a['tokenised']}/{a['rows']}"
        assert audit[name][6:8] == [str(a["zero_supervised"]["count"]), str(a["answers_cut"]["count"])]
    losses = by_first_cell(tables["stage|steps"])
    assert losses["1-s1"][1:4] == ["4", "5.0000", "3.0000"]
    assert tables["after|benchmark"][1:] == [
        ["run", "gqa", "accuracy", "0.3125"],
        ["run", "pope", "random.f1", "0.5000"],
        ["run", "pope", "mean_f1", "0.5000"],
        ["1-s1", "gqa", "accuracy", "0.2500"],
    ]
    variants = by_first_cell(tables["variant|status"])
    assert set(variants) == {r.name for r in grid_results()}
    assert len(parsed.images) == 2 and all(src.startswith("data:image/png;base64,") for src in parsed.images)


def test_ablation_report_renders_with_its_table(tmp_path):
    results = grid_results()
    paths = write_report("grid", results, tmp_path / "grid", varied="ocr")
    shot, dom = render(paths["html"], tmp_path)
    assert_not_blank(shot)
    parsed = tables_of(dom)
    rows = {r[0]: r for t in parsed.tables for r in t[1:]}
    assert {r.name for r in results} <= set(rows)
    assert parsed.images and all(src.startswith("data:image/png;base64,") for src in parsed.images)


def test_a_missing_chromium_fails_with_a_message_not_a_skip(monkeypatch):
    import headless

    monkeypatch.setattr(headless.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="chromium not found: install Debian's `chromium` package"):
        headless.chromium()
