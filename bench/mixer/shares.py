"""Bench part (b): how closely each window of packed sequences meets the declared shares, tinymix vs its peers.

Users declare token shares (`TOKEN_WEIGHTS`). tinymix plans by tokens directly. `webdataset.RandomMix` and 🤗
`datasets.interleave_datasets` weight by samples, so they get the best translation a user can make,
p_s ∝ w_s / mean tokens of s (`sample_probs`); their output streams are packed greedily (multipack's first fit,
`packing.first_fit_greedy`) into sequences, and windows are runs of `window` sequences, as for tinymix. Token
shares are scored against `TOKEN_WEIGHTS`, sample shares against p, for every contestant.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

import mixer.plan.planner as planner_module
from bench.mixer.packing import Pool, cut_lengths, first_fit_greedy, run_plan, stage_sequences
from mixer.plan import PlanSpec, SourceInput

# declared token shares, deliberately unlike the pool's own shares (LLaVA-Instruct and text-only ShareGPT upweighted)
TOKEN_WEIGHTS: dict[str, float] = {
    "llava_instruct": 0.30,
    "sharegpt": 0.10,
    "vqa": 0.25,
    "ocr_vqa": 0.10,
    "textcaps": 0.05,
    "grounding": 0.20,
}


def sample_probs(weights: np.ndarray, cut: list[np.ndarray]) -> np.ndarray:
    """Sample probabilities that give token shares `weights` on average: p_s ∝ w_s / mean tokens of source s."""
    mean = np.array([c[c > 0].mean() for c in cut])
    p = weights / mean
    return p / p.sum()


def window_deviation(per_seq: np.ndarray, weights: np.ndarray, window: int) -> dict[str, float]:
    """Share deviations (percentage points, max over sources) of runs of `window` sequences.

    `per_seq` is [n_seq, S] (tokens or samples of each source in each sequence). "worst" and "median" are over the
    aligned full windows (sequences k*window ..), as the planner's summary counts them; "worst_sliding" over every
    run of `window` consecutive sequences.
    """
    n = len(per_seq) // window
    assert n > 0, "fewer sequences than one window"
    aligned = per_seq[: n * window].reshape(n, window, -1).sum(axis=1)
    dev = np.abs(aligned / aligned.sum(axis=1, keepdims=True) - weights).max(axis=1) * 100
    csum = np.concatenate([np.zeros((1, per_seq.shape[1])), np.cumsum(per_seq, axis=0)])
    runs = csum[window:] - csum[:-window]
    sliding = np.abs(runs / runs.sum(axis=1, keepdims=True) - weights).max(axis=1) * 100
    return {
        "worst": float(dev.max()),
        "median": float(np.median(dev)),
        "p99": float(np.percentile(dev, 99)),
        "worst_sliding": float(sliding.max()),
        "windows": int(n),
    }


def pack_stream(source: np.ndarray, tokens: np.ndarray, n_src: int, seq_len: int, open_max: int) -> tuple:
    """A peer's sample stream packed greedily: per sequence and source (tokens, samples), int64 [n_seq, S]."""
    seq = first_fit_greedy(tokens, seq_len, open_max)
    t = np.zeros((int(seq.max()) + 1, n_src), dtype=np.int64)
    c = np.zeros_like(t)
    np.add.at(t, (seq, source), tokens)
    np.add.at(c, (seq, source), 1)
    assert t.sum(axis=1).max() <= seq_len, "a packed sequence is longer than seq_len"
    return t, c


def _until(pairs: Iterator[tuple[int, int]], budget: int) -> tuple[np.ndarray, np.ndarray]:
    """The first items of a (source, tokens) stream whose tokens reach `budget`."""
    out, total = [], 0
    for s, t in pairs:
        out.append((s, t))
        total += t
        if total >= budget:
            break
    arr = np.array(out, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


class _Epochs:
    """One source read in seeded, shuffled epochs without end, as a resampled WebDataset pipeline reads a shard set."""

    def __init__(self, position: int, tokens: np.ndarray, seed: int) -> None:
        self.position, self.tokens, self.seed = position, tokens[tokens > 0], seed

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng((self.seed, 3, self.position))
        while True:
            for t in self.tokens[rng.permutation(len(self.tokens))].tolist():
                yield self.position, t


def random_mix_stream(cut: list[np.ndarray], probs: np.ndarray, seed: int, budget: int) -> tuple:
    """`webdataset.RandomMix` (1.0.2) over the sources with probabilities `probs`: (source, tokens) up to `budget`."""
    from webdataset import RandomMix

    random.seed(seed)  # RandomMix draws from the module-level `random`
    mix = RandomMix([_Epochs(s, c, seed) for s, c in enumerate(cut)], probs=probs.tolist())
    return _until(iter(mix), budget)


def interleave_stream(cut: list[np.ndarray], probs: np.ndarray, seed: int, budget: int) -> tuple:
    """🤗 `interleave_datasets(probabilities=probs, stopping_strategy="all_exhausted")` over in-memory datasets.

    Returns (source, tokens) up to `budget` tokens, or the whole interleaved set if it holds fewer.
    """
    from datasets import Dataset, interleave_datasets

    parts = [
        Dataset.from_dict({"source": np.full(int((c > 0).sum()), s, dtype=np.int64), "tokens": c[c > 0]})
        for s, c in enumerate(cut)
    ]
    mixed = interleave_datasets(parts, probabilities=probs.tolist(), seed=seed, stopping_strategy="all_exhausted")
    table = mixed.with_format("arrow")[:]  # one Arrow take; row-wise access through the indices is ~100x slower
    source, tokens = table.column("source").to_numpy(), table.column("tokens").to_numpy()
    stop = int(np.searchsorted(np.cumsum(tokens), budget)) + 1
    return source[:stop].astype(np.int64), tokens[:stop].astype(np.int64)


@contextmanager
def planner_constants(**values: float) -> Iterator[None]:
    """What-if: set planner module constants (e.g. OVERSHOOT, LOOKAHEAD) for the block, restoring them after.

    The planner reads them at call time; mixer/plan itself stays unchanged.
    """
    old = {k: getattr(planner_module, k) for k in values}
    try:
        for k, v in values.items():
            setattr(planner_module, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(planner_module, k, v)


# ---- one seq_len, side by side


def weighted_sources(pool: Pool, weights: np.ndarray) -> list[SourceInput]:
    return [
        SourceInput(name, float(w), length, ends, img)
        for name, w, length, ends, img in zip(
            pool.names, weights, pool.lengths, pool.turn_ends, pool.images, strict=True
        )
    ]


def compare_shares(pool: Pool, seq_len: int, *, window: int, open_max: int, seed: int) -> dict:
    """Windowed share deviations of tinymix (by tokens and by samples) and of both peers on the pool at `seq_len`.

    Every contestant places about the tokens of the tinymix stage (whole windows holding about the pool's tokens).
    Returns {"weights", "probs", "rows": [{name, tokens: window_deviation, samples: window_deviation, efficiency,
    sequences}]}.
    """
    cut = cut_lengths(pool, seq_len)
    w = np.array([TOKEN_WEIGHTS[name] for name in pool.names])
    w = w / w.sum()
    p = sample_probs(w, cut)
    size = stage_sequences(cut, seq_len, window)
    rows = []

    def row(name: str, tokens: np.ndarray, samples: np.ndarray) -> dict:
        eff = tokens.sum() / (len(tokens) * seq_len)
        dev_t, dev_s = window_deviation(tokens, w, window), window_deviation(samples, p, window)
        rows.append(
            {"name": name, "tokens": dev_t, "samples": dev_s, "efficiency": float(eff), "sequences": len(tokens)}
        )
        return rows[-1]

    for by, weights in (("tokens", w), ("samples", p)):
        planned = run_plan(
            weighted_sources(pool, weights), PlanSpec(seq_len, by, seed, num_sequences=size, window=window)
        )
        got = row(f"tinymix plan, weight_by={by}", planned.tokens, planned.samples)
        # our window metric and the planner's own summary must agree on the planner's windows
        assert abs(got[by]["worst"] - planned.summary.worst_window_deviation_pp) < 1e-6, (got[by], planned.summary)
    budget = int(rows[0]["efficiency"] * size * seq_len)
    for name, stream in (
        ("webdataset.RandomMix + greedy first-fit", random_mix_stream),
        ("datasets.interleave_datasets(all_exhausted) + greedy first-fit", interleave_stream),
    ):
        source, tokens = stream(cut, p, seed, budget)
        t, c = pack_stream(source, tokens, len(cut), seq_len, open_max)
        row(name, t, c)
    return {"weights": w.tolist(), "probs": p.tolist(), "rows": rows}


def share_limits(pool: Pool, seq_len: int, *, window: int, seed: int) -> list[dict]:
    """The tinymix plan by tokens with one planner constant changed at a time (what-ifs).

    mixer/plan is not edited: its constants are patched in-process. Deviations are measured over `window`-sequence
    windows whatever window the planner holds shares over; "own" is the planner's figure over its own window.
    """
    cut = cut_lengths(pool, seq_len)
    w = np.array([TOKEN_WEIGHTS[name] for name in pool.names])
    w = w / w.sum()
    rows = []
    cases: list[tuple[str, int, dict[str, float]]] = [
        ("as planned", window, {}),
        ("no repair pass (BALANCE_MOVES 0)", window, {"BALANCE_MOVES": 0}),
        ("repair may give up no slots (BALANCE_LOSS 0)", window, {"BALANCE_LOSS": 0.0}),
        ("repair may give up 5% of slots (BALANCE_LOSS 0.05)", window, {"BALANCE_LOSS": 0.05}),
        ("OVERSHOOT 0", window, {"OVERSHOOT": 0.0}),
        (f"window {4 * window}", 4 * window, {}),
    ]
    for variant, plan_window, knobs in cases:
        size = stage_sequences(cut, seq_len, plan_window)
        spec = PlanSpec(seq_len, "tokens", seed, num_sequences=size, window=plan_window)
        with planner_constants(**knobs):
            planned = run_plan(weighted_sources(pool, w), spec)
        rows.append(
            {
                "variant": variant,
                "efficiency": planned.summary.packing_efficiency,
                "tokens": window_deviation(planned.tokens, w, window),
                "own_window_worst": planned.summary.worst_window_deviation_pp,
            }
        )
    return rows


def granularity(cut: list[np.ndarray], names: tuple[str, ...], seq_len: int, window: int) -> dict[str, float]:
    """One median sample of each source as percentage points of a window's slots: the step a share moves by."""
    return {n: float(np.median(c[c > 0]) / (seq_len * window) * 100) for n, c in zip(names, cut, strict=True)}
