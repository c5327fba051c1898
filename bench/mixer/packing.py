"""Bench part (a): packing efficiency of a tinymix plan vs padding to the batch's longest and greedy multipacking.

Every contestant sees the same pool (`make_pool`: the LLaVA-mix-like lengths of `bench/lengths.py`, overlong
samples cut at their largest turn end <= seq_len as the planner does, `cut_lengths`) and is scored by real tokens
over the token slots it spends. `packing_bound` is the yardstick no packer can beat on that pool: an LP relaxation
of bin packing (arc-flow), so a figure below a target can be told apart from a target the lengths do not allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from bench.lengths import LLAVA_MIX, draw, draw_turn_ends
from bench.scale.generate import source_sizes
from mixer.plan import PlanSpec, PlanSummary, SourceInput, best_fit_decreasing, packer
from mixer.plan.planner import Planner

MIN_SEQ_LEN = 2048  # turn ends are drawn only for samples longer than this: shorter ones are never cut


@dataclass(frozen=True)
class Pool:
    """Per-source sample lengths (text + image tokens), images per sample and CSR turn ends, in LLAVA_MIX order."""

    names: tuple[str, ...]
    lengths: tuple[np.ndarray, ...]  # int32 [n_s]
    images: tuple[np.ndarray, ...]  # int8 [n_s]
    turn_ends: tuple[tuple[np.ndarray, np.ndarray], ...]  # (offsets int64 [n_s + 1], values int32)

    def samples(self) -> int:
        return sum(len(x) for x in self.lengths)


def make_pool(n: int, seed: int) -> Pool:
    """`n` samples split over the six sources by the mix's sample shares, drawn with `numpy.random.default_rng(seed)`.

    A sample of at most `MIN_SEQ_LEN` tokens gets one turn end (its length); a longer one gets turns of 30-400 text
    tokens after its image (`bench.lengths.draw_turn_ends`), so every contestant can cut it the same way.
    """
    rng = np.random.default_rng(seed)
    lengths, images, ends = [], [], []
    for law, size in zip(LLAVA_MIX, source_sizes(n), strict=True):
        length, img = draw(law, size, rng)
        long = np.flatnonzero(length > MIN_SEQ_LEN)
        long_off, long_val = draw_turn_ends(length[long], img[long], rng)
        per = np.ones(size, dtype=np.int64)
        per[long] = np.diff(long_off)
        offsets = np.concatenate([[0], np.cumsum(per)])
        values = np.repeat(length.astype(np.int32), per)  # a short sample's one end; long ones are set below
        for j, i in enumerate(long.tolist()):
            values[offsets[i] : offsets[i + 1]] = long_val[long_off[j] : long_off[j + 1]]
        lengths.append(length)
        images.append(img)
        ends.append((offsets, values))
    return Pool(tuple(law.name for law in LLAVA_MIX), tuple(lengths), tuple(images), tuple(ends))


def cut_lengths(pool: Pool, seq_len: int) -> list[np.ndarray]:
    """Each source's lengths after the planner's overlong rule: cut at the largest turn end <= seq_len, 0 = dropped."""
    out = []
    for length, (offsets, values) in zip(pool.lengths, pool.turn_ends, strict=True):
        cut = length.astype(np.int64).copy()
        for i in np.flatnonzero(cut > seq_len).tolist():
            ends = values[offsets[i] : offsets[i + 1]]
            ends = ends[ends <= seq_len]
            cut[i] = int(ends.max()) if ends.size else 0
        out.append(cut)
    return out


def arrival_order(pool: Pool, cut: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pool as one shuffled stream, as a sampler over the concatenated data set gives it.

    Returns (source int64 [n], tokens int64 [n], images int64 [n]) without the dropped samples.
    """
    source = np.concatenate([np.full(len(c), s, dtype=np.int64) for s, c in enumerate(cut)])
    tokens = np.concatenate(cut)
    images = np.concatenate(pool.images).astype(np.int64)
    keep = np.flatnonzero(tokens > 0)
    order = keep[np.random.default_rng((seed, 1)).permutation(len(keep))]
    return source[order], tokens[order], images[order]


# ---- the contestants


@dataclass(frozen=True)
class Planned:
    """A tinymix plan seen per packed sequence: tokens and samples of each source, and the planner's own summary."""

    tokens: np.ndarray  # int64 [n_seq, S]
    samples: np.ndarray  # int64 [n_seq, S]
    summary: PlanSummary


def run_plan(sources: list[SourceInput], spec: PlanSpec) -> Planned:
    """Plan the stage window by window (nothing written to disk) and tabulate every sequence."""
    planner = Planner(sources, spec, packer(spec.algorithm))  # iter_plan's code path, keeping the summary
    tokens, samples = [], []
    for w in planner.windows():
        seq = np.repeat(np.arange(len(w)), np.diff(w.seq_starts))
        src = w.segments["source"].astype(np.int64)
        t = np.zeros((len(w), len(sources)), dtype=np.int64)
        c = np.zeros_like(t)
        np.add.at(t, (seq, src), w.segments["tokens"].astype(np.int64))
        np.add.at(c, (seq, src), 1)
        tokens.append(t)
        samples.append(c)
    return Planned(np.concatenate(tokens), np.concatenate(samples), planner.summary())


def pad_to_longest(tokens: np.ndarray, batch: int) -> float:
    """LLaVA's collator: batches of `batch` samples in the given order, each padded to its longest."""
    n = len(tokens) // batch * batch  # the last partial batch is left out (drop_last)
    b = tokens[:n].reshape(-1, batch)
    return float(b.sum() / (b.max(axis=1).sum() * batch))


def llava_order(tokens: np.ndarray, has_image: np.ndarray, batch: int, world: int, seed: int) -> np.ndarray:
    """The sample order of LLaVA-1.5's `group_by_modality_length` sampler (consecutive `batch` = one device batch).

    A port of `get_modality_length_grouped_indices` (haotian-liu/LLaVA, llava/train/llava_trainer.py) with numpy's
    generator for torch's: per modality, megabatches of `batch * world` shuffled samples, each sorted longest first
    and dealt to `world` device batches by `split_to_even_chunks` (each sample to the device batch with the fewest
    tokens so far); the two modalities' last megabatches are merged; megabatches are shuffled. LLaVA sorts by words
    of text, which orders samples of one modality as their token counts do.
    """
    rng = np.random.default_rng((seed, 2))
    mega = batch * world
    groups = []
    for mask in (has_image, ~has_image):
        idx = np.flatnonzero(mask)[rng.permutation(int(mask.sum()))]
        chunks = []
        for i in range(0, len(idx), mega):
            m = idx[i : i + mega]
            m = m[np.argsort(-tokens[m], kind="stable")]
            chunks.append(np.concatenate(_even_chunks(m, tokens, world)))
        groups.append(chunks)
    (mm, lang) = groups
    extra = np.concatenate([mm[-1], lang[-1]])
    megabatches = mm[:-1] + lang[:-1]
    megabatches = [megabatches[i] for i in rng.permutation(len(megabatches))]
    if len(extra) >= mega:
        megabatches, extra = [extra[:mega], *megabatches], extra[mega:]
    if len(extra):
        megabatches.append(extra)
    return np.concatenate(megabatches)


def hf_length_order(tokens: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """The sample order of 🤗 Trainer's `group_by_length` on one process (consecutive `batch` = one batch).

    As `transformers.trainer_pt_utils.get_length_grouped_indices`: shuffled megabatches of min(n // (4 * batch), 50)
    batches, each sorted longest first and cut into consecutive batches.
    """
    mega = max(1, min(len(tokens) // (4 * batch), 50)) * batch
    order = np.random.default_rng((seed, 4)).permutation(len(tokens))
    parts = [order[i : i + mega] for i in range(0, len(order), mega)]
    return np.concatenate([m[np.argsort(-tokens[m], kind="stable")] for m in parts])


def batch_mix(source: np.ndarray, tokens: np.ndarray, size: int, weights: np.ndarray) -> dict[str, float]:
    """Token-share deviation (pp, max over sources) of each run of `size` consecutive samples: median and worst.

    Sorting by length buys padding with the mix: a length-grouped batch holds the sources of one length band.
    """
    n = len(tokens) // size
    per = np.zeros((n, len(weights)))
    np.add.at(per, (np.arange(n * size) // size, source[: n * size]), tokens[: n * size])
    dev = np.abs(per / per.sum(axis=1, keepdims=True) - weights).max(axis=1) * 100
    return {"median": float(np.median(dev)), "worst": float(dev.max())}


def _even_chunks(indices: np.ndarray, tokens: np.ndarray, chunks: int) -> list[np.ndarray]:
    """LLaVA's `split_to_even_chunks`: deal indices (longest first) to the chunk with the fewest tokens so far."""
    if len(indices) % chunks:
        return [indices[i::chunks] for i in range(chunks)]
    per = len(indices) // chunks
    out: list[list[int]] = [[] for _ in range(chunks)]
    load = [0.0] * chunks
    for i in indices.tolist():
        k = load.index(min(load))
        out[k].append(i)
        load[k] += float(tokens[i])
        if len(out[k]) == per:
            load[k] = float("inf")
    return [np.array(c, dtype=np.int64) for c in out]


def first_fit_greedy(tokens: np.ndarray, seq_len: int, open_max: int) -> np.ndarray:
    """Multipack's greedy baseline: samples in arrival order, each into the first open sequence with room.

    Only the last `open_max` opened sequences are open; a sample that fits none opens a new one (closing the
    oldest past `open_max`). Returns each sample's sequence (int64 [n], numbered in opening order).
    """
    out = np.empty(len(tokens), dtype=np.int64)
    open_ids: list[int] = []
    room: list[int] = []
    made = 0
    for i, t in enumerate(tokens.tolist()):
        for k, r in enumerate(room):
            if t <= r:
                room[k] = r - t
                out[i] = open_ids[k]
                break
        else:
            open_ids.append(made)
            room.append(seq_len - t)
            out[i] = made
            made += 1
            if len(open_ids) > open_max:
                del open_ids[0], room[0]
    return out


def efficiency(tokens: np.ndarray, bins: np.ndarray, seq_len: int) -> float:
    """Real tokens over the slots of the sequences used, asserting that no sequence overflows."""
    per = np.bincount(bins, weights=tokens)
    assert per.max() <= seq_len, "a packed sequence is longer than seq_len"
    return float(tokens.sum() / (len(per) * seq_len))


def offline_bfd(tokens: np.ndarray, seq_len: int) -> float:
    """Best-fit decreasing over the whole pool at once (no window, no shares): TRL's `bfd` packing strategy."""
    return efficiency(tokens, best_fit_decreasing(tokens, seq_len), seq_len)


# ---- the yardstick


def packing_bound(tokens: np.ndarray, seq_len: int, units: int = 512, fluid_below: int | None = None) -> float:
    """An upper bound on any packer's efficiency for these lengths (real tokens / (bins * seq_len)).

    A relaxation of the bin-packing problem, solved exactly as a linear program in arc-flow form: sizes are rounded
    down to multiples of `seq_len // units` tokens, samples shorter than `fluid_below` (default seq_len / 8) may be
    split anywhere like a fluid, and the number of bins may be fractional. Each relaxation can only lower the number
    of sequences needed, so real tokens / (ceil(LP) * seq_len) bounds every packing of `tokens` from above.
    """
    q = max(1, seq_len // units)
    fluid_below = seq_len // 8 if fluid_below is None else fluid_below
    size, count = np.unique(tokens[tokens >= fluid_below] // q, return_counts=True)
    fluid = float(tokens[tokens < fluid_below].sum())
    cap = seq_len // q
    # arcs: an item of class c from node u to u + size[c]; a unit of free room from u to u + 1; one bin is a path 0..cap
    tail = [np.arange(cap - w + 1) for w in size.tolist()] + [np.arange(cap)]
    width = [np.full(len(t), w) for t, w in zip(tail, [*size.tolist(), 1], strict=True)]
    cls = [np.full(len(t), c) for c, t in enumerate(tail)]  # class len(size) = free room
    tail, width, cls = np.concatenate(tail), np.concatenate(width), np.concatenate(cls)
    arcs = len(tail)
    z = arcs  # the variable counting bins
    rows = np.concatenate([tail + width, tail, [0, cap]])
    cols = np.concatenate([np.arange(arcs), np.arange(arcs), [z, z]])
    vals = np.concatenate([np.ones(arcs), -np.ones(arcs), [1.0, -1.0]])
    flow = coo_matrix((vals, (rows, cols)), shape=(cap + 1, arcs + 1)).tocsr()  # in - out = 0; bins leave 0, reach cap
    room = cls == len(size)
    need = coo_matrix(
        (np.where(room, -float(q), -1.0), (cls, np.arange(arcs))), shape=(len(size) + 1, arcs + 1)
    ).tocsr()  # every item class covered, and the free room holds the fluid
    cost = np.zeros(arcs + 1)
    cost[z] = 1.0
    res = linprog(
        cost,
        A_ub=need,
        b_ub=-np.concatenate([count, [fluid]]),
        A_eq=flow,
        b_eq=np.zeros(cap + 1),
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"packing bound: the LP solver failed: {res.message}")
    return float(tokens.sum() / (np.ceil(res.fun - 1e-6) * seq_len))


# ---- one seq_len, side by side


def natural_sources(pool: Pool, cut: list[np.ndarray], by_samples: bool = False) -> list[SourceInput]:
    """The pool as planner sources weighted by their own token (or sample) shares: a stage of about one pass."""
    return [
        SourceInput(name, float((c > 0).sum() if by_samples else c.sum()), length, ends, img)
        for name, c, length, ends, img in zip(pool.names, cut, pool.lengths, pool.turn_ends, pool.images, strict=True)
    ]


def stage_sequences(cut: list[np.ndarray], seq_len: int, window: int) -> int:
    """Stage size in sequences: whole windows holding about the pool's tokens."""
    return max(1, int(sum(int(c.sum()) for c in cut) // (seq_len * window))) * window


def compare_packing(pool: Pool, seq_len: int, *, window: int, batch: int, world: int, seed: int) -> list[dict]:
    """Packing efficiency of every contestant on the pool at `seq_len`: rows of {name, efficiency}.

    Padding rows also carry `global_batch_mix_pp`: the token-share deviation of each global batch (`batch * world`
    samples) from the pool's token shares, the price of length grouping.
    """
    cut = cut_lengths(pool, seq_len)
    spec = PlanSpec(seq_len, "tokens", seed, num_sequences=stage_sequences(cut, seq_len, window), window=window)
    source, tokens, images = arrival_order(pool, cut, seed)
    shares = np.bincount(source, weights=tokens) / tokens.sum()
    planned = run_plan(natural_sources(pool, cut), spec).summary
    rows = [
        {
            "name": f"tinymix plan (best fit in windows of {window}, token shares held)",
            "efficiency": planned.packing_efficiency,
            "worst_window_pp": planned.worst_window_deviation_pp,
        }
    ]
    for m in sorted({4, batch}):  # token budget: a micro batch of m rows is one bin (`packing: budget`)
        if window % m or m < 2:
            continue
        size = spec.num_sequences // m  # type: ignore[operator]
        budget = PlanSpec(seq_len, "tokens", seed, num_sequences=size, window=window // m, bin_rows=m)
        s = run_plan(natural_sources(pool, cut), budget).summary
        name = f"tinymix plan, token budget: micro batch of {m} x {seq_len} tokens as one varlen row, shares held"
        rows.append({"name": name, "efficiency": s.packing_efficiency, "worst_window_pp": s.worst_window_deviation_pp})
    for name, order in (
        (f"pad to the batch's longest, shuffled (LLaVA), B={batch}", np.arange(len(tokens))),
        (
            f"pad to the batch's longest, LLaVA-1.5 `group_by_modality_length`, B={batch} x {world} ranks",
            llava_order(tokens, images > 0, batch, world, seed),
        ),
        (f"pad to the batch's longest, 🤗 Trainer `group_by_length`, B={batch}", hf_length_order(tokens, batch, seed)),
    ):
        rows.append(
            {
                "name": name,
                "efficiency": pad_to_longest(tokens[order], batch),
                "global_batch_mix_pp": batch_mix(source[order], tokens[order], batch * world, shares),
            }
        )
    for k in (8, 64):
        bins = first_fit_greedy(tokens, seq_len, k)
        name = f"greedy first-fit multipack, arrival order, last {k} open"
        rows.append({"name": name, "efficiency": efficiency(tokens, bins, seq_len)})
    rows.append(
        {
            "name": "best-fit decreasing over the whole pool at once (TRL `bfd`)",
            "efficiency": offline_bfd(tokens, seq_len),
        }
    )
    rows.append(
        {
            "name": "upper bound for any packer on these lengths (LP relaxation)",
            "efficiency": packing_bound(tokens, seq_len),
        }
    )
    return rows


def packing_limits(pool: Pool, seq_len: int, *, seed: int, windows: tuple[int, ...] = (64, 256, 1024)) -> list[dict]:
    """The tinymix plan with its constraints changed one at a time: rows of {window, shares, efficiency, worst_pp}.

    Windows of each size in `windows`; shares by tokens, by samples (first window size only), or none (every
    sample in one source, so only the window and the packer remain).
    """
    cut = cut_lengths(pool, seq_len)
    lengths, images = np.concatenate(pool.lengths), np.concatenate(pool.images)
    merged = [SourceInput("all", 1.0, lengths, _merge_csr(pool.turn_ends), images)]
    rows = []
    for window in windows:
        size = stage_sequences(cut, seq_len, window)
        for shares, sources, by in (
            ("tokens", natural_sources(pool, cut), "tokens"),
            ("samples", natural_sources(pool, cut, by_samples=True), "samples"),
            ("none (one source)", merged, "tokens"),
        ):
            if by == "samples" and window != windows[0]:
                continue
            s = run_plan(sources, PlanSpec(seq_len, by, seed, num_sequences=size, window=window)).summary
            row = {"window": window, "shares": shares, "efficiency": s.packing_efficiency}
            rows.append({**row, "worst_pp": s.worst_window_deviation_pp})
    return rows


def _merge_csr(parts: tuple[tuple[np.ndarray, np.ndarray], ...]) -> tuple[np.ndarray, np.ndarray]:
    offsets, base = [np.zeros(1, dtype=np.int64)], 0
    for off, _ in parts:
        offsets.append(off[1:] + base)
        base += int(off[-1])
    return np.concatenate(offsets), np.concatenate([v for _, v in parts])
