"""Planning's bar (`mixer.plan.progress`): windows planned of the stage's total, or tokens of its budget, with an ETA
in a log's lines; the plan itself is the same with or without the bar."""

from __future__ import annotations

import re

import numpy as np

from mixer.plan import PlanReader, PlanSpec, SourceInput, iter_plan, plan_stage
from shards.progress import LOG_EVERY_ENV

LINE = re.compile(r"^plan s: (\d+)/(\d+) \(\d+%\) elapsed \d\d:\d\d eta (\d\d:\d\d|\?), .+$")
TOKEN_LINE = re.compile(r"^plan s: ([\d.]+)k?/([\d.]+)k? \(\d+%\) elapsed \d\d:\d\d eta (\d\d:\d\d|\?), .+$")


def sources() -> list[SourceInput]:
    rng = np.random.default_rng(0)
    return [SourceInput(f"s{i}", 1.0 + i, rng.integers(4, 40, 300).astype(np.int32)) for i in range(2)]


def test_a_sequence_sized_stage_counts_windows_and_plans_the_same(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LOG_EVERY_ENV, "0")  # a line per window
    spec = PlanSpec(seq_len=64, weight_by="tokens", seed=3, num_sequences=100, window=16)
    summary = plan_stage(sources(), spec, tmp_path / "plan", progress="plan s")
    lines = capsys.readouterr().err.splitlines()
    got = [LINE.match(line) for line in lines]
    assert all(got), lines
    assert [int(m[1]) for m in got] == list(range(8)) and {int(m[2]) for m in got} == {7}  # ⌈100 / 16⌉ windows
    assert got[-1][3] == "00:00"
    planned = list(PlanReader(tmp_path / "plan").sequences(0))
    reference = [
        w.segments[a:b]
        for w in iter_plan(sources(), spec)
        for a, b in zip(w.seq_starts[:-1], w.seq_starts[1:], strict=True)
    ]
    assert summary.num_sequences == len(planned) == 100
    assert all(np.array_equal(p, r) for p, r in zip(planned, reference, strict=True))


def test_a_token_budget_counts_tokens_up_to_the_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LOG_EVERY_ENV, "0")
    spec = PlanSpec(seq_len=64, weight_by="tokens", seed=3, num_tokens=3000, window=8)
    summary = plan_stage(sources(), spec, tmp_path / "plan", progress="plan s")
    lines = capsys.readouterr().err.splitlines()
    got = [TOKEN_LINE.match(line) for line in lines]
    assert all(got), lines
    assert got[-1][1] == got[-1][2] == "3.00" and got[-1][3] == "00:00"  # 3.00k of 3.00k tokens: capped at the budget
    assert summary.num_tokens >= 3000


def test_no_bar_unless_asked(tmp_path, capsys):
    spec = PlanSpec(seq_len=64, weight_by="tokens", seed=3, num_sequences=20, window=16)
    plan_stage(sources(), spec, tmp_path / "plan")
    assert capsys.readouterr().err == ""
