"""`train launch`'s progress: the ETA estimator on a fake clock (exact seconds), the stage bar's log lines, a launch.

The launch test trains the loader tests' build (stage s1, 8 steps) plus a second planned stage (s2, 3 steps) with a
fake clock that advances one second per reading, so every ETA on the log lines is an exact, known number.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "mixer"))  # the loader tests' build fixture
from test_loader_fixtures import built_stage  # noqa: E402

from shards.progress import LOG_EVERY_ENV, progress  # noqa: E402
from train import progress as train_progress  # noqa: E402
from train.progress import EtaEstimator, StagePlan, stage_bar, start_run  # noqa: E402

LINE = re.compile(
    r"^stage (?:(\d+) )?(\S+): (\d+)/(\d+) \(\d+%\) elapsed \d\d:\d\d eta (\S+), .*"
    r"\| run (\d+)/(\d+) elapsed (\S+) eta (\S+)$"
)


def ticks(*times: float):
    it = iter(times)
    return lambda: next(it)


def seconds(text: str) -> int | None:
    """`01:02` / `1:00:05` → seconds; `?` → None."""
    if text == "?":
        return None
    total = 0
    for part in text.split(":"):
        total = total * 60 + int(part)
    return total


def test_eta_learns_each_stage_cost_from_its_steps_and_the_next_from_the_work_per_step():
    clock = ticks(10, 12, 13, 15, 18, 22, 26, 29, 31)
    eta = EtaEstimator([StagePlan("a", 4, 100.0), StagePlan("b", 3, 300.0)], clock=clock)
    eta.begin("a")
    assert eta.stage_remaining() is None and eta.run_remaining() is None  # nothing timed yet
    eta.step()  # 2 s
    assert eta.stage_remaining() == 6.0  # 3 steps × 2 s
    assert eta.seconds_per_step("b") == 6.0  # 2 s per 100 slots × 300 slots
    assert eta.run_remaining() == 6.0 + 3 * 6.0
    eta.step()  # 1 s: the first step (loader start-up, warm-up) leaves the mean
    assert eta.stage_remaining() == 2 * 1.0 and eta.seconds_per_step("b") == 3.0 and eta.run_remaining() == 2.0 + 9.0
    eta.step()  # 2 s
    eta.step()  # 3 s: a's steady mean is (1 + 2 + 3) / 3 = 2 s for 100 slots
    assert eta.stage_remaining() == 0.0 and eta.run_remaining() == 3 * 6.0 and eta.steps_done == 4
    eta.begin("b")  # the 4 s between stages (set-up, evals) are not a step's
    eta.step()  # 4 s: b's own time replaces the prior
    assert eta.stage_remaining() == 2 * 4.0 and eta.run_remaining() == 8.0
    eta.step()  # 3 s
    assert eta.stage_remaining() == 3.0 and eta.run_remaining() == 3.0
    eta.step()
    assert eta.run_remaining() == 0.0 and eta.steps_done == eta.total == 7
    assert eta.run_elapsed() == 21.0


def test_a_resumed_run_counts_from_the_checkpoint_step_and_skipped_stages_as_done():
    eta = EtaEstimator([StagePlan("a", 4, 1.0), StagePlan("b", 10, 1.0)], clock=ticks(0, 2, 5))
    eta.begin("b", done=4)  # a finished in an earlier run; b resumed at its step 4
    assert eta.steps_done == 8 and eta.stage_remaining("a") == 0.0
    assert eta.run_remaining() is None
    eta.step()  # 2 s
    assert eta.stage_remaining() == 5 * 2.0 and eta.run_remaining() == 10.0  # 5 steps left, not 9
    eta.step()  # 3 s
    assert eta.stage_remaining() == 4 * 3.0 and eta.steps_done == 10  # the first step left out of the mean


def test_stage_bars_log_both_etas(monkeypatch, capsys):
    monkeypatch.setenv(LOG_EVERY_ENV, "0")
    monkeypatch.setattr(train_progress, "clock", itertools.count().__next__)  # 0, 1, 2 … s, one per reading
    start_run([StagePlan("a", 3, 1.0, 1), StagePlan("b", 2, 2.0, 2)])
    for name, steps in (("a", 3), ("b", 2)):
        bar = stage_bar(total=steps, initial=0, desc=name, disable=False)
        for _ in range(steps):
            bar.set_postfix(loss="1.0", refresh=False)
            bar.update(1)
        bar.close()
    lines = capsys.readouterr().err.splitlines()
    got = [(m[1], m[2], m[3], m[5], m[6], m[7], m[8], m[9]) for m in map(LINE.match, lines) if m]
    assert len(got) == len(lines), lines
    assert got == [
        ("1", "a", "0", "?", "0", "5", "00:00", "?"),
        ("1", "a", "1", "00:02", "1", "5", "00:01", "00:06"),  # b's prior: 1 s per slot × 2 slots × 2 steps
        ("1", "a", "2", "00:01", "2", "5", "00:02", "00:05"),
        ("1", "a", "3", "00:00", "3", "5", "00:03", "00:04"),
        ("2", "b", "0", "00:04", "3", "5", "00:04", "00:04"),
        ("2", "b", "1", "00:01", "4", "5", "00:05", "00:01"),  # b's own 1 s per step
        ("2", "b", "2", "00:00", "5", "5", "00:06", "00:00"),
    ]
    assert all("loss=1.0" in line for line in lines[1:4])


def test_a_resumed_stage_bar_starts_at_its_checkpoint_step(tmp_path, monkeypatch, capsys):
    from train.metrics import MetricsWriter, StepMetrics

    monkeypatch.setenv(LOG_EVERY_ENV, "0")
    monkeypatch.setattr(train_progress, "clock", itertools.count().__next__)
    start_run([StagePlan("a", 4, 1.0, 1), StagePlan("b", 10, 1.0, 2)])  # a finished earlier: --resume skipped it
    with MetricsWriter(tmp_path / "2-b.jsonl", total=10, initial=6, enabled=True, desc="b") as writer:  # run_stage's
        writer.write(StepMetrics("b", 7, 0.25, 1e-3, None, 10, 2, 2, 0.5, 0.0))
    got = [LINE.match(line) for line in capsys.readouterr().err.splitlines()]
    # 6/10 then 7/10 of b, 10/14 then 11/14 of the run; one step timed (1 s) → 3 s left, not 9
    assert [(m[3], m[5], m[6], m[7], m[9]) for m in got] == [
        ("6", "?", "10", "14", "?"),
        ("7", "00:03", "11", "14", "00:03"),
    ]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_redrawn_bar_with_both_etas(monkeypatch):
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(train_progress, "clock", itertools.count().__next__)
    start_run([StagePlan("a", 2, 1.0, 1)])
    bar = stage_bar(total=2, initial=0, desc="a", disable=False)
    bar.set_postfix(loss="0.5", refresh=False)
    bar.update(1)
    bar.update(1)
    bar.close()
    last = tty.getvalue().split("\r")[-1].strip()
    assert "\n" not in tty.getvalue().rstrip()  # redrawn in place, one line
    bar_line = r"stage 1 a: 100%\|#+\| 2/2 \[\d\d:\d\d<00:00, .* steps/s\] run 2/2 \[00:02<00:00\], loss=0\.5"
    assert re.fullmatch(bar_line, last), last


def test_a_disabled_bar_prints_nothing(tmp_path, monkeypatch, capsys):
    from train.metrics import MetricsWriter, StepMetrics

    monkeypatch.setenv(LOG_EVERY_ENV, "0")
    out = io.StringIO()
    with progress(total=3, desc="x", file=out, disable=True, fields=lambda: {"extra": 1}) as bar:
        bar.update(3)
    bar = stage_bar(total=3, initial=1, desc="rank1", disable=True)
    bar.set_postfix(loss="1.0")
    bar.update(2)
    bar.close()
    with MetricsWriter(tmp_path / "m.jsonl", total=3, initial=0, enabled=False, desc="s") as writer:  # rank > 0
        writer.write(StepMetrics("s", 1, 0.25, 1e-3, None, 10, 2, 2, 0.5, 0.0))
    assert out.getvalue() == "" and capsys.readouterr() == ("", "") and not (tmp_path / "m.jsonl").exists()


def test_a_bad_progress_interval_is_named(monkeypatch):
    from shards.progress import log_every_s

    monkeypatch.setenv(LOG_EVERY_ENV, "soon")
    with pytest.raises(ValueError, match=r"\$TINYMIX_PROGRESS_EVERY: expected seconds, got 'soon'"):
        log_every_s()
    monkeypatch.setenv(LOG_EVERY_ENV, "5")
    assert log_every_s() == 5.0


S2 = """
  - name: s2
    mixture: {vqa: 1, chat: 1}
    size: {steps: 3}
    seq_len: 96
    window: 8
    template: tinygptv
    image_size: 32
    trains: [connector]
    optimizer: {lr: 1.0e-3}
    micro_batch: 2
    global_batch: 4
"""


@pytest.mark.slow
def test_a_launch_logs_lines_whose_etas_count_down_to_zero(tmp_path, tmp_path_factory, tiny_tokenizer, monkeypatch):
    from mixer.manifest import load_manifest
    from mixer.planning import plan_one
    from train.cli import app

    base = built_stage(tmp_path_factory, tiny_tokenizer)
    out = tmp_path / "out"
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("run"))
    manifest = tmp_path / "manifest.yaml"
    text = (base.parent / "manifest.yaml").read_text()
    # the fixture plans 8 image tokens per image: a resampler of 8 queries emits exactly that many
    text = text.replace("connector: {type: mlp2x_gelu}", "connector: {type: resampler, num_queries: 8}")
    manifest.write_text(text.rstrip() + "\n" + S2)
    m = load_manifest(manifest)
    from mixer.contract import StageContract

    lengths = StageContract.read(str(out), "s1").lengths  # s2 reads the same index (the copy's: paths are relative)
    plan_one(m, 1, str(out), lengths)

    monkeypatch.setenv(LOG_EVERY_ENV, "0")  # a line per step
    monkeypatch.setattr(train_progress, "clock", itertools.count().__next__)
    res = CliRunner().invoke(app, ["launch", str(manifest), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.output
    got = [m for m in map(LINE.match, res.stderr.splitlines()) if m]
    planned = {"s1": 8, "s2": 3}
    for name, steps in planned.items():  # each stage: a line per step from 0, its own total, ends with eta 0
        mine = [m for m in got if m[2] == name]
        assert [int(m[3]) for m in mine] == list(range(steps + 1)) and {int(m[4]) for m in mine} == {steps}
        assert mine[-1][5] == "00:00"
    runs = [int(m[6]) for m in got]
    assert runs == list(range(9)) + list(range(8, 12)) and {int(m[7]) for m in got} == {sum(planned.values())}
    etas = [seconds(m[9]) for m in got]
    # one second per step, the same work per step in both stages: 11 - k seconds left after k steps
    assert etas == [None, *range(10, 2, -1), 3, 2, 1, 0]
    rows = sum(len((out / "run" / "metrics" / f).read_text().splitlines()) for f in ("1-s1.jsonl", "2-s2.jsonl"))
    assert rows == runs[-1]
