"""`mixer ablate`'s bar: variants trained of those left to train (finished ones are not counted), with an ETA."""

from __future__ import annotations

import re

from mixer.ablate import Variant, VariantResult, grid_variants, run_sweep
from shards.progress import LOG_EVERY_ENV

LINE = re.compile(r"^ablate t: (\d+)/(\d+) \(\d+%\) elapsed \d\d:\d\d eta (\d\d:\d\d|\?), .+$")
VARIANTS = grid_variants({"a": 2, "b": 1}, "a", [0.2, 0.4])


def runner(variant: Variant) -> VariantResult:
    return VariantResult(variant.name, dict(variant.mixture), "ok", eval_loss={"a": 1.0})


def test_a_sweep_logs_variants_done_of_those_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LOG_EVERY_ENV, "0")
    run_sweep("t", VARIANTS, runner, tmp_path)
    got = [LINE.match(line) for line in capsys.readouterr().err.splitlines()]
    assert all(got) and [(int(m[1]), int(m[2])) for m in got] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert got[-1][3] == "00:00"
    (tmp_path / "variants" / "a-0.4" / "result.json").unlink()
    run_sweep("t", VARIANTS, runner, tmp_path)  # only a-0.4 runs again
    got = [LINE.match(line) for line in capsys.readouterr().err.splitlines()]
    assert [(int(m[1]), int(m[2])) for m in got] == [(0, 1), (1, 1)]
    run_sweep("t", VARIANTS, runner, tmp_path)  # nothing left to run: no bar
    assert capsys.readouterr().err == ""
