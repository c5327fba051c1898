"""Token-budget packing (`PlanSpec.bin_rows`, the manifest's `packing: budget`): a planned sequence is a micro batch of
`bin_rows × seq_len` tokens, no sample over `seq_len`; shares per window and epoch-faithful placement as for rows."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plan_epochs import check_epoch_order, draw_sources, run, usable
from test_plan_planner import llava_like

from mixer.manifest.stages import StageConfig
from mixer.plan import ALGORITHMS, PlanSpec, SourceInput
from mixer.plan.planner import BALANCE_TOL
from mixer.planning import stage_spec

WEIGHTS = [0.3, 0.1, 0.25, 0.1, 0.05, 0.2]


@st.composite
def budget_cases(draw_):
    seq_len = draw_(st.integers(16, 96))
    rows = draw_(st.integers(2, 6))
    sources = draw_sources(draw_, seq_len)
    spec = PlanSpec(
        seq_len=seq_len,
        weight_by=draw_(st.sampled_from(["tokens", "samples"])),
        seed=draw_(st.integers(0, 2**31)),
        num_sequences=draw_(st.integers(1, 60)),
        window=draw_(st.integers(1, 8)),
        overlong=draw_(st.sampled_from(["truncate", "drop"])),
        algorithm=draw_(st.sampled_from(sorted(ALGORITHMS))),
        bin_rows=rows,
    )
    return sources, spec


@settings(max_examples=40, deadline=None)
@given(budget_cases())
def test_budget_bins_hold_their_budget_no_sample_over_seq_len_and_epochs_whole(case):
    sources, spec = case
    windows, summary = run(sources, spec)
    counts = check_epoch_order(windows, sources, spec)  # every epoch placed whole before a sample repeats
    for s, src in enumerate(sources):
        assert summary.samples[s] == int(counts[s].sum()) and not counts[s][~usable(src, spec)].any()
    budget = spec.bin_rows * spec.seq_len
    for w in windows:
        assert len(w) <= spec.window
        for i in range(len(w)):
            seq = w.segments[w.seq_starts[i] : w.seq_starts[i + 1]]
            assert len(seq) >= 1 and int(seq["tokens"].sum()) <= budget
        assert int(w.segments["tokens"].max()) <= spec.seq_len  # a sample never takes more than one row's tokens
    placed = sum(int(w.segments["tokens"].sum()) for w in windows)
    assert summary.num_sequences == sum(len(w) for w in windows)
    if summary.num_sequences:  # a source capped below one sample plans nothing (a PlanError at mixer build)
        assert summary.packing_efficiency == pytest.approx(placed / (summary.num_sequences * budget))
    else:
        assert placed == 0


@pytest.mark.parametrize("seq_len", [2048, 4096])
def test_budget_packs_tighter_than_rows_and_keeps_every_window_within_tolerance(seq_len):
    # The same tokens per window (64 rows = 4 micro batches of 16 rows); by tokens every full window within 0.4 pp.
    sources = llava_like(WEIGHTS, "tokens")
    rows = PlanSpec(seq_len=seq_len, weight_by="tokens", seed=3, num_sequences=64 * 16, window=64)
    budget = PlanSpec(seq_len=seq_len, weight_by="tokens", seed=3, num_sequences=4 * 16, window=4, bin_rows=16)
    _, by_rows = run(sources, rows)
    windows, by_budget = run(sources, budget)
    assert by_budget.packing_efficiency >= max(0.995, by_rows.packing_efficiency)
    for w in windows[:-1]:
        got = np.bincount(w.segments["source"], weights=w.segments["tokens"], minlength=6)
        assert np.abs(got / got.sum() - WEIGHTS).max() <= BALANCE_TOL + 1e-12, w.index
    assert by_budget.worst_window_deviation_pp <= 100 * BALANCE_TOL + 1e-9
    assert np.abs(np.array(by_budget.realised_shares["tokens"]) - WEIGHTS).max() < 0.001


def test_default_spec_keeps_its_summary_and_rejects_bad_budgets():
    spec = PlanSpec(seq_len=64, weight_by="tokens", seed=0, num_sequences=4)
    src = [SourceInput("a", 1.0, np.full(10, 30, np.int32), max_epochs=1.0)]
    _, summary = run(src, spec)
    assert "bin_rows" not in summary.spec  # rows plans (the default) write the summary they always wrote
    assert summary.num_sequences == 4 and summary.num_tokens == 8 * 30  # two 30-token samples per 64-token row
    _, summary = run(src, PlanSpec(seq_len=64, weight_by="tokens", seed=0, num_sequences=4, bin_rows=2))
    assert summary.spec["bin_rows"] == 2
    assert summary.num_tokens == 10 * 30 and summary.packing_efficiency == 300 / (summary.num_sequences * 128)
    with pytest.raises(ValueError, match="bin_rows"):
        PlanSpec(seq_len=64, weight_by="tokens", seed=0, num_sequences=4, bin_rows=0)
    with pytest.raises(ValueError, match="bin_rows"):
        PlanSpec(seq_len=64, weight_by="tokens", seed=0, num_sequences=4, bin_rows=2, packing=False)


def _stage(**kw) -> dict:
    base = {
        "name": "s",
        "mixture": {"a": 1.0},
        "size": {"steps": 5},
        "trains": ["connector"],
        "optimizer": {"lr": 1e-3},
        "micro_batch": 4,
        "global_batch": 16,
        "window": 16,
    }
    return base | kw


def test_stage_option_packing_budget():
    stage = StageConfig(**_stage(packing="budget"))
    spec = stage_spec(SimpleNamespace(seed=0), stage, [])  # type: ignore[arg-type]
    # 5 steps × 16 rows = 80 rows = 20 micro batches of 4 rows' tokens; a window of 16 rows is 4 micro batches
    assert (spec.bin_rows, spec.num_sequences, spec.window, spec.seq_len) == (4, 20, 4, 2048)
    rows = stage_spec(SimpleNamespace(seed=0), StageConfig(**_stage()), [])  # type: ignore[arg-type]
    assert (rows.bin_rows, rows.num_sequences, rows.window) == (1, 80, 16)
    with pytest.raises(ValueError, match="window 6 is not a multiple of micro_batch 4"):
        StageConfig(**_stage(packing="budget", window=6))
    with pytest.raises(ValueError, match="packing"):
        StageConfig(**_stage(packing="bins"))
