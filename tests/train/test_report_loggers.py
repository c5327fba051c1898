"""`report_to: [tensorboard, wandb]` on a tiny run: every logger holds the JSONL's numbers.

`train launch --report-to tensorboard,wandb` trains the loader tests' real build (8 steps of a tiny model); the
TensorBoard events are read back with tensorboard's `EventAccumulator`, the offline W&B run file with wandb's
protobuf records (`wandb_log`), and both are compared with `RUN/metrics/1-s1.jsonl` value for value.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "mixer"))  # the loader tests' build fixture
from test_loader_fixtures import built_stage  # noqa: E402
from wandb_log import config, history  # noqa: E402

from mixer.manifest import load_manifest  # noqa: E402
from train.report import SCALARS, parse_report_to  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_tokenizer):
    from train.cli import app

    base = built_stage(tmp_path_factory, tiny_tokenizer)
    out = tmp_path_factory.mktemp("loggers") / "out"
    shutil.copytree(base, out)
    # the fixture plans 8 image tokens per image: a resampler of 8 queries emits exactly that many
    text = (base.parent / "manifest.yaml").read_text()
    manifest = out.parent / "manifest.yaml"
    manifest.write_text(text.replace("connector: {type: mlp2x_gelu}", "connector: {type: resampler, num_queries: 8}"))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        args = ["launch", str(manifest), "--out", str(out), "--workers", "0"]
        res = CliRunner().invoke(app, [*args, "--report-to", "tensorboard,wandb"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "run" / "metrics" / "1-s1.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # 8 optimizer steps, numbered from 1
    return out / "run", rows


def test_tensorboard_scalars_equal_the_jsonl(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs, rows = run
    acc = EventAccumulator(str(runs / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    logged = [k for k in SCALARS if rows[0].get(k) is not None]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "images_per_s", "loader_wait_s", "step_time_s"} <= set(logged)
    assert tags == {f"s1/{k}" for k in logged}
    for key in logged:
        events = acc.Scalars(f"s1/{key}")
        assert [e.step for e in events] == [r["step"] for r in rows]
        assert [e.value for e in events] == [float(np.float32(r[key])) for r in rows], key  # stored as float32
    from train.pipeline import plan_digest

    text = acc.Tensors("run/plans/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n")) == {"s1": plan_digest(str(runs.parent), "s1")}


def test_offline_wandb_run_holds_the_same_history_and_the_plan_digest(run):
    from train.pipeline import plan_digest

    runs, rows = run
    files = list((runs / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    hist = history(files[0])
    assert len(hist) == len(rows)
    for h, r in zip(hist, rows, strict=True):
        assert h["s1/step"] == r["step"]
        for key in SCALARS:
            if r.get(key) is not None:
                assert h[f"s1/{key}"] == pytest.approx(r[key], rel=1e-12), key
    cfg = config(files[0])
    assert cfg["plans"] == {"s1": plan_digest(str(runs.parent), "s1")} and cfg["stages"] == ["s1"]
    assert cfg["manifest"]["name"] == "loadertest"


def test_report_to_is_a_manifest_field_and_a_bad_name_is_one_line(tmp_path_factory, tiny_tokenizer, tmp_path):
    from mixer.manifest import ManifestError
    from train.cli import app

    manifest = built_stage(tmp_path_factory, tiny_tokenizer).parent / "manifest.yaml"
    assert load_manifest(manifest).report_to == ["jsonl"]
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(manifest.read_text() + "report_to: [tensorboard, wandb]\n")
    bad.write_text(manifest.read_text() + "report_to: [jsonl, mlflow]\n")
    assert load_manifest(good).report_to == ["tensorboard", "wandb"]
    with pytest.raises(ManifestError, match="report_to"):
        load_manifest(bad)
    assert parse_report_to("tensorboard, wandb,tensorboard") == ["tensorboard", "wandb"]
    res = CliRunner().invoke(app, ["launch", str(manifest), "--report-to", "tensorboard,mlflow"])
    assert res.exit_code == 2
    assert (
        res.stderr.strip() == "--report-to: report_to: unknown logger 'mlflow'; choose from jsonl, tensorboard, wandb"
    )


def test_a_stage_eval_row_becomes_eval_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train import report

    report.open_reporters(tmp_path, ["tensorboard"], {"plans": {"s": "ab"}}, "t")
    report.log({"stage": "s", "step": 3, "eval": {"gqa": {"accuracy": 0.25}, "pope": {"random": {"f1": 0.5}}}})
    report.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"s/eval/gqa.accuracy", "s/eval/pope.random.f1"}
    assert [(e.step, e.value) for e in acc.Scalars("s/eval/pope.random.f1")] == [(3, 0.5)]
