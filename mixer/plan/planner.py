"""The planning driver: sources + spec -> a stream of windows of packed sequences, and the summary of a plan.

A stage is planned one window (`spec.window` sequences) at a time, with only that window's picks and each source's
lookahead in memory:

1. quotas: each active source's share of the window (`quota.Targets`, cumulative, so errors are paid back);
2. bulk: the oldest free items of each source worth a share of its quota (at most `CORE_FILL`, less while the packer
   leaves items out), packed into the window's sequences by the spec's algorithm (best/first-fit decreasing); what
   does not fit goes back to the lookahead;
3. top-up: the gaps left are filled from the lookaheads, steered to the sources below quota (`quota.top_up`);
4. repair: items are swapped, added or taken out until every share of the window is within `BALANCE_TOL` of its
   weight, giving up at most `BALANCE_LOSS` of the window's slots (`balance.balance`); the sequences are then
   emitted in an order that keeps runs straddling two windows near the weights too (`balance.emit_order`).

Measured on the LLaVA-like lengths of `bench/lengths.py` (64-sequence windows, six sources; `bench/mixer`): every
window within 0.40 pp of the weights by tokens at seq_len 2048 and 4096, packing 94.8% and 99.7%; runs of 64
sequences straddling two windows within ~1.7-1.8 pp.

Epochs: within a source each epoch is a permutation, and a window places a sample for the (k+1)-th time only if
every usable sample of its source is placed k times by the end of that window. So after every window the placements
of a source's samples differ by at most one, and a stage places each usable sample floor(E) or ceil(E) times, E being
its placements over its usable samples (dropped samples: never, counted in `dropped`; truncated ones count as
placed). The granularity is the window: in the window where an epoch ends, the next one's first samples may be
emitted a few sequences before the old one's last (in sequence order wherever the packing allows, `epochs.py`).
Packing chooses among the lookahead's items of the current epoch, and of the next epochs only in a window that also
places all that is left of the current one (`Planner._window`); a source far smaller than a window crosses several
epochs in one.

With `packing=False` every sequence holds one sample (padded), the source chosen by largest deficit.

The per-window work runs in numba kernels cached on disk, in a folder keyed by their source (`cache.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from numba import njit

from mixer.plan.balance import balance, emit_order
from mixer.plan.epochs import epoch_order, relabel
from mixer.plan.order import TICKET_BITS, TICKET_MASK, Lookahead, SourceStream, remove_at, take_oldest
from mixer.plan.order import insert as insert_back
from mixer.plan.pack import run_kernel
from mixer.plan.quota import Targets, normalise, put_item, top_up

SEGMENT_DTYPE = np.dtype([("source", "<i2"), ("sample", "<i8"), ("tokens", "<i4"), ("truncated", "?")])
CORE_FILL = 0.95  # share of a window's quota taken in the bulk pass at most; the rest is left for gap-aware top-up
CORE_MIN, CORE_STEP = 0.6, 0.01  # the bulk share adapts between CORE_MIN and CORE_FILL (see Planner._packed)
LOOKAHEAD = 1024  # free items kept per source: more gives tighter fits, at a little more copying per move
OVERSHOOT = 0.002  # how far past its quota (share of a window) a source may go to fill a gap; the next window repays
BALANCE_TOL = 0.004  # after packing, items are moved until every share is within this of its weight (0.4 pp)
BALANCE_MOVES = 256  # at most this many repair moves per window
BALANCE_LOSS = 0.02  # ... giving up at most this share of the window's token slots
Packer = Callable[[np.ndarray, int, int], np.ndarray]


@dataclass(frozen=True)
class SourceInput:
    """One source as the planner sees it: a name, a declared weight and the token length of every sample."""

    name: str
    weight: float  # declared mixture weight (normalised over the sources)
    lengths: np.ndarray  # int32 [n] tokens of each sample (text + image tokens); may be a np.memmap
    turn_ends: tuple[np.ndarray, np.ndarray] | None = None  # CSR (offsets int64 [n+1], values int32) cut points
    images: np.ndarray | None = None  # int8 [n] images per sample, for realised image shares
    max_epochs: float | None = None  # cap on passes over this source


@dataclass(frozen=True)
class PlanSpec:
    """What to plan: sequence length, what a weight means, the stage size, window and packing."""

    seq_len: int
    weight_by: Literal["tokens", "samples"]
    seed: int
    num_sequences: int | None = None  # stage size: exactly one of num_sequences / num_tokens
    num_tokens: int | None = None  # real (non-pad) tokens; the plan ends at the first sequence reaching it
    window: int = 64  # shares hold within every run of `window` packed sequences
    packing: bool = True  # False: one sample per sequence (padded), LLaVA's way
    algorithm: str = "best_fit_decreasing"  # see mixer.plan.ALGORITHMS
    overlong: Literal["truncate", "drop"] = "truncate"

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"seq_len: must be >= 1, got {self.seq_len}")
        if self.weight_by not in ("tokens", "samples"):
            raise ValueError(f"weight_by: must be 'tokens' or 'samples', got {self.weight_by!r}")
        if (self.num_sequences is None) == (self.num_tokens is None):
            raise ValueError("give exactly one of num_sequences or num_tokens")
        if (self.num_sequences or self.num_tokens or 0) < 1:
            raise ValueError("num_sequences / num_tokens: must be >= 1")
        if self.window < 1:
            raise ValueError(f"window: must be >= 1, got {self.window}")
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")
        if self.overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong: must be 'truncate' or 'drop', got {self.overlong!r}")


@dataclass(frozen=True)
class Window:
    """One window of packed sequences: segments in sequence order and where each sequence starts."""

    index: int
    first_sequence: int
    segments: np.ndarray  # SEGMENT_DTYPE [k]
    seq_starts: np.ndarray  # int64 [n_seq + 1] offsets into segments
    images: np.ndarray  # int64 [k] images per segment
    weights: np.ndarray  # float64 [S] the normalised weights in force for this window
    exhausted: tuple[str, ...] = ()  # sources that ran out during this window

    def __len__(self) -> int:
        return len(self.seq_starts) - 1


@dataclass
class PlanSummary:
    """What a plan realised against what was declared; `to_dict()` is what `summary.json` holds."""

    spec: dict
    sources: list[str]
    declared_shares: list[float]
    realised_shares: dict[str, list[float]]  # by "samples", "tokens", "images"
    samples: list[int]
    tokens: list[int]
    images: list[int]
    epochs: list[float]  # placed samples / source size
    exhausted: list[dict]  # {"source", "window", "sequence"}: hit max_epochs (or all dropped) and renormalised
    truncated: list[int]
    dropped: list[int]
    num_sequences: int
    num_tokens: int  # real tokens
    num_windows: int
    packing_efficiency: float  # real tokens / (sequences * seq_len)
    worst_window_deviation_pp: float  # max |share - weight| in percentage points, by weight_by
    worst_window: int | None
    deviation_note: str = (
        "over aligned windows of `window` sequences by weight_by; the final partial window and windows in which a "
        "source was exhausted are excluded"
    )
    stopped_early: str | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Tally:
    """Running totals for the summary, fed one window at a time."""

    n: int
    samples: np.ndarray = field(init=False)
    tokens: np.ndarray = field(init=False)
    images: np.ndarray = field(init=False)
    truncated: np.ndarray = field(init=False)
    sequences: int = 0
    windows: int = 0
    worst: float = 0.0
    worst_window: int | None = None

    def __post_init__(self) -> None:
        z = np.zeros(self.n, dtype=np.int64)
        self.samples, self.tokens, self.images, self.truncated = z.copy(), z.copy(), z.copy(), z.copy()

    def add(self, w: Window, full: bool, by_tokens: bool) -> None:
        src = w.segments["source"].astype(np.int64)
        per_s = np.bincount(src, minlength=self.n)
        per_t = np.bincount(src, weights=w.segments["tokens"], minlength=self.n).astype(np.int64)
        self.samples += per_s
        self.tokens += per_t
        self.images += np.bincount(src, weights=w.images, minlength=self.n).astype(np.int64)
        self.truncated += np.bincount(src, weights=w.segments["truncated"], minlength=self.n).astype(np.int64)
        self.sequences += len(w)
        self.windows += 1
        measure = per_t if by_tokens else per_s
        if full and not w.exhausted and measure.sum() > 0:
            dev = float(np.abs(measure / measure.sum() - w.weights).max() * 100)
            if dev > self.worst:
                self.worst, self.worst_window = dev, w.index


class Planner:
    """Plans one stage window by window; `windows()` yields them, `summary()` describes the plan afterwards."""

    def __init__(self, sources: list[SourceInput], spec: PlanSpec, pack: Packer) -> None:
        _check_sources(sources)
        self.sources, self.spec, self.kernel = sources, spec, pack.kernel_id  # type: ignore[attr-defined]
        self.by_tokens = spec.weight_by == "tokens"
        self.streams = [
            SourceStream(i, s.name, s.lengths, spec.seed, spec.seq_len, spec.overlong, s.turn_ends, s.max_epochs)
            for i, s in enumerate(sources)
        ]
        self.look = Lookahead(len(sources), _lookahead_size(sources, spec))
        self.active = np.ones(len(sources), dtype=bool)
        self.declared = normalise([s.weight for s in sources], self.active)
        self.targets = Targets(self.declared.copy())
        self.exhausted: list[dict] = []
        self.tally = _Tally(len(sources))
        self.stopped_early: str | None = None
        self.core_fill = CORE_FILL
        self._last = np.zeros((0, len(sources)))  # the last window's measure per sequence and source, emitted order

    # ---- the loop
    def windows(self) -> Iterator[Window]:
        spec = self.spec
        placed_tokens = 0
        while True:
            bins_wanted = spec.window
            if spec.num_sequences is not None:
                bins_wanted = min(spec.window, spec.num_sequences - self.tally.sequences)
            elif placed_tokens >= spec.num_tokens:
                bins_wanted = 0
            if bins_wanted <= 0:
                return
            for s, stream in enumerate(self.streams):
                if self.active[s] and self.look.n[s] <= self.look.size // 2:  # half a lookahead still holds a window
                    self.look.refill(s, stream)
            weights = self.targets.weights.copy()
            items, arranged = self._window(bins_wanted, spec.num_tokens - placed_tokens if spec.num_tokens else None)
            ran_out = self._check_exhausted(len(np.unique(items[:, 4])))
            if not len(items):
                self.stopped_early = "every source is exhausted"
                return
            window = self._emit(items, arranged, weights, ran_out)
            placed_tokens += int(window.segments["tokens"].sum())
            # the last window of a num_tokens stage is cut where the tokens are reached: partial by definition
            final = spec.num_tokens is not None and placed_tokens >= spec.num_tokens
            self.tally.add(window, len(window) == spec.window and not final, self.by_tokens)
            yield window
            if not self.active.any():
                short = self.tally.sequences < (spec.num_sequences or 0) or placed_tokens < (spec.num_tokens or 0)
                self.stopped_early = "every source is exhausted" if short else None
                return

    def _window(self, n_bins: int, tokens_left: int | None) -> tuple[np.ndarray, tuple | None]:
        """The items of the next window and their emission order (None when there are no items).

        Sources whose epoch is all drawn and whose old-epoch items are worth less than their quota may cross into
        the next epochs in this window (`Lookahead.cross`). A window whose rows hold several epochs of a source is
        kept only if it leaves no item of that source older than one it placed (items left behind are first swapped
        in, `_finish_epoch`). Otherwise it is planned again with that source held to its oldest epoch: its share may
        fall short by what that epoch lacked, repaid by the next window's quota.
        """
        crossing, strict = self._crossing(n_bins), set()
        sizes = [len(src.lengths) for src in self.sources]
        # a window can fail only where a row holds two epochs: copy the lookahead only then (it is large)
        risky = bool(crossing) or any(self.look.epochs(s, n) > 1 for s, n in enumerate(sizes))
        snap, core_fill = self.look.snapshot() if risky else None, self.core_fill
        while True:
            for s, want in crossing.items():
                if s not in strict:
                    self.look.cross(s, self.streams[s], want, self.by_tokens)
            hidden = {s: self.look.hide_newer(s, sizes[s]) for s in strict}
            spanning = [s for s, n in enumerate(sizes) if self.look.epochs(s, n) > 1]
            items = self._packed(n_bins) if self.spec.packing else self._single(n_bins)
            if tokens_left is not None:
                items = self._cut_at_tokens(items, tokens_left)
            for s in spanning:
                items = self._finish_epoch(items, s)
            failed = {s for s in spanning if not self._left_in_order(items, s)}
            arranged = self._arrange(items, spanning) if len(items) and not failed else None
            if not failed:
                for s in crossing:
                    if s not in strict:
                        self.look.settle(s)
                for s, back in hidden.items():
                    self.look.add(s, *back)
                return items, arranged
            self.look.restore(snap)
            self.core_fill = core_fill
            strict |= failed

    def _finish_epoch(self, items: np.ndarray, s: int) -> np.ndarray:
        """The window's items with those row `s` still holds of an epoch older than one the window placed swapped in.

        Each takes the place of a placed item of a newer epoch whose sequence it fits (newest epoch first, then the
        closest in tokens; that item goes back to the row), or else goes into the fullest gap that takes it. Stops
        when none fits: the window then fails.
        """
        n, lk, seq_len = len(self.sources[s].lengths), self.look, self.spec.seq_len
        while lk.n[s] and len(items):
            mine = items[:, 0] == s
            epochs = items[:, 2] // n
            if not mine.any() or lk.fifo[s, 0] // n >= epochs[mine].max():
                return items
            tokens, ticket = int(lk.fifo_tokens[s, 0]), int(lk.fifo[s, 0])
            room = seq_len - np.bincount(items[:, 4], weights=items[:, 1], minlength=int(items[:, 4].max()) + 1)
            fits = mine & (epochs > lk.fifo[s, 0] // n) & (room[items[:, 4]] + items[:, 1] >= tokens)
            gaps = np.flatnonzero(room >= tokens)
            if not fits.any() and not gaps.size:
                return items
            pos = int(np.searchsorted(lk.key[s, : lk.n[s]], tokens << TICKET_BITS | ticket))
            got = remove_at(lk.key, lk.sample, lk.fifo, lk.fifo_tokens, lk.n, s, pos)
            if fits.any():  # newest epoch first, then the closest in tokens
                c = int(np.flatnonzero(fits)[np.lexsort((np.abs(items[fits, 1] - tokens), -epochs[fits]))[0]])
                lk.give_back(s, int(items[c, 1]), int(items[c, 2]), int(items[c, 3]))
                items[c, 1], items[c, 2], items[c, 3] = got
            else:  # into the fullest gap that takes it
                b = int(gaps[np.argmin(room[gaps])])
                items = np.vstack([items, np.array([[s, *got, b]], dtype=items.dtype)])
        return items

    def _left_in_order(self, items: np.ndarray, s: int) -> bool:
        """Whether every item row `s` keeps after the window is of an epoch no older than any the window placed."""
        n, m = len(self.sources[s].lengths), int(self.look.n[s])
        placed = items[items[:, 0] == s, 2] // n
        return not m or not placed.size or self.look.fifo[s, 0] // n >= placed.max()

    def _crossing(self, n_bins: int) -> dict[int, float]:
        """Sources that may finish their epoch within the coming window, with what they need of the next ones."""
        quotas = self.targets.quotas(self._capacity(n_bins))
        out = {}
        for s, stream in enumerate(self.streams):
            m = int(self.look.n[s])
            if not self.active[s] or not m or not self.look.epoch_end(s, stream):
                continue
            have = self.look.fifo_tokens[s, :m].sum() if self.by_tokens else m
            if have < quotas[s]:
                out[s] = float(quotas[s] - have) + (self.spec.seq_len if self.by_tokens else 1)
        return out

    def _capacity(self, n_bins: int) -> float:
        tokens = n_bins * self.spec.seq_len
        if self.by_tokens:
            return float(tokens)
        if self.tally.samples.sum():
            mean = self.tally.tokens.sum() / self.tally.samples.sum()
        else:  # first window: the mean of what the lookaheads hold, weighted by the declared shares
            means = [self.look.mean_tokens(s) for s in range(len(self.streams))]
            mean = float(np.dot(self.targets.weights, means)) or float(self.spec.seq_len)
        return tokens / mean

    def _packed(self, n_bins: int) -> np.ndarray:
        capacity = self._capacity(n_bins)
        slack = OVERSHOOT * capacity if self.by_tokens else max(OVERSHOOT * capacity, 1.0)
        lk = self.look
        items, unplaced = pack_window(
            self.kernel, lk.key, lk.sample, lk.fifo, lk.fifo_tokens, lk.n, self.targets.quotas(capacity),
            self.active, self.by_tokens, self.core_fill, slack, self.spec.seq_len, n_bins, self.targets.weights,
            self.targets.owed(), BALANCE_TOL, BALANCE_MOVES, int(BALANCE_LOSS * n_bins * self.spec.seq_len),
        )  # fmt: skip
        # the bulk pass should be all the packer can place: what it leaves out is the shortest items, which the gaps
        # cannot take either, so their sources fall behind; back off when that happens, creep up while it does not
        self.core_fill = (
            max(CORE_MIN, self.core_fill - CORE_STEP) if unplaced else min(CORE_FILL, self.core_fill + CORE_STEP / 4)
        )
        return items

    def _single(self, n_bins: int) -> np.ndarray:
        lk = self.look
        placed = self.targets.placed - self.targets.base
        return single_window(
            lk.key, lk.sample, lk.fifo, lk.fifo_tokens, lk.n, self.targets.weights, placed, self.active,
            self.by_tokens, n_bins,
        )  # fmt: skip

    def _cut_at_tokens(self, items: np.ndarray, need: int) -> np.ndarray:
        """Keep the sequences up to the first at which the stage's tokens are reached; give the rest back."""
        per_bin = np.bincount(items[:, 4], weights=items[:, 1]) if len(items) else np.zeros(0)
        reached = np.flatnonzero(np.cumsum(per_bin) >= need)
        if not reached.size:
            return items
        keep = items[:, 4] <= reached[0]
        for s, tokens, ticket, sample, _ in items[~keep].tolist():
            self.look.give_back(s, tokens, ticket, sample)
        return items[keep]

    def _check_exhausted(self, sequence_offset: int) -> tuple[str, ...]:
        """Sources that can give nothing more: mark them, renormalise the others from the next window on."""
        gone = []
        for s, stream in enumerate(self.streams):
            if self.active[s] and stream.capped() and self.look.empty(s):
                self.active[s] = False
                gone.append(s)
                self.exhausted.append(
                    {
                        "source": stream.name,
                        "window": self.tally.windows,
                        "sequence": self.tally.sequences + sequence_offset,
                    }
                )
        if gone:
            self.targets.reweight(normalise([x.weight for x in self.sources], self.active))
        return tuple(self.streams[s].name for s in gone)

    def _arrange(self, items: np.ndarray, crossed: list[int]) -> tuple:
        """(sequence of each item, items' emission order, per-sequence measures in emitted order).

        Sequences go in `emit_order`'s share-keeping order, moved where that puts the placements of a source that
        crossed into a new epoch (`crossed`) in epoch order too (`epochs.epoch_order`); not every packing allows it.
        May swap the samples of a crossing source's items of equal tokens (`epochs.relabel`), in place.
        """
        _, bins = np.unique(items[:, 4], return_inverse=True)  # sequences numbered 0.. (empty bins are skipped)
        measure = items[:, 1] if self.by_tokens else np.ones(len(items), dtype=np.int64)
        per_bin = np.zeros((int(bins.max(initial=-1)) + 1, len(self.streams)))
        np.add.at(per_bin, (bins, items[:, 0]), measure)
        order = emit_order(per_bin, self.targets.weights, self._last)
        epoch = np.zeros(len(items), dtype=np.int64)
        if crossed:
            relabel(items, bins, order, crossed)
            for s in crossed:
                mine = items[:, 0] == s
                epoch[mine] = items[mine, 2] // len(self.sources[s].lengths)
            # best effort: sequences in epoch order where the packing allows, else the window is the granularity
            moved = epoch_order(order, bins, items[:, 0], epoch, crossed)
            order = order if moved is None else moved
        rank = np.empty(len(per_bin), dtype=np.int64)
        rank[order] = np.arange(len(per_bin))
        bins = rank[bins]  # sequences in emission order
        # by sequence, inside one in epoch order, then in placement order
        return bins, np.lexsort((np.arange(len(items)), epoch, bins)), per_bin[order]

    def _emit(self, items: np.ndarray, arranged: tuple, weights: np.ndarray, ran_out: tuple[str, ...]) -> Window:
        bins, order, self._last = arranged
        items, bins = items[order], bins[order]
        seg = np.zeros(len(items), dtype=SEGMENT_DTYPE)
        seg["source"], seg["sample"], seg["tokens"] = items[:, 0], items[:, 3], items[:, 1]
        images = np.zeros(len(items), dtype=np.int64)
        got = np.zeros(len(self.streams))
        for s, src in enumerate(self.sources):
            rows = np.flatnonzero(items[:, 0] == s)
            if not rows.size:
                continue
            samples = items[rows, 3]
            seg["truncated"][rows] = items[rows, 1] < np.asarray(src.lengths[samples])
            if src.images is not None:
                images[rows] = np.asarray(src.images[samples], dtype=np.int64)
            got[s] = items[rows, 1].sum() if self.by_tokens else len(rows)
        self.targets.record(got)
        starts = np.zeros(int(bins.max(initial=-1)) + 2, dtype=np.int64)
        np.cumsum(np.bincount(bins), out=starts[1:])
        return Window(self.tally.windows, self.tally.sequences, seg, starts, images, weights, ran_out)

    # ---- after the loop
    def summary(self) -> PlanSummary:
        t, spec = self.tally, self.spec
        sizes = np.array([max(len(s.lengths), 1) for s in self.sources], dtype=np.float64)

        def shares(x: np.ndarray) -> list[float]:
            return (x / x.sum()).tolist() if x.sum() else [0.0] * len(x)

        real = int(t.tokens.sum())
        return PlanSummary(
            spec=asdict(spec),
            sources=[s.name for s in self.sources],
            declared_shares=self.declared.tolist(),
            realised_shares={"samples": shares(t.samples), "tokens": shares(t.tokens), "images": shares(t.images)},
            samples=t.samples.tolist(),
            tokens=t.tokens.tolist(),
            images=t.images.tolist(),
            epochs=(t.samples / sizes).tolist(),
            exhausted=self.exhausted,
            truncated=t.truncated.tolist(),
            dropped=[st.counts.dropped for st in self.streams],
            num_sequences=t.sequences,
            num_tokens=real,
            num_windows=t.windows,
            packing_efficiency=real / (t.sequences * spec.seq_len) if t.sequences else 0.0,
            worst_window_deviation_pp=t.worst,
            worst_window=t.worst_window,
            stopped_early=self.stopped_early,
            seed=spec.seed,
        )


@njit(cache=True)
def pack_window(
    kernel,
    key,
    sample,
    fifo,
    fifo_tokens,
    n,
    quotas,
    active,
    by_tokens,
    core_fill,
    slack,
    seq_len,
    bins,
    weights,
    carry,
    tol,
    moves,
    may_lose,
):  # noqa: ANN001, ANN201, E501
    """One window of `bins` sequences: bulk pass, packer `kernel`, top-up, share repair (`balance.balance`).

    Bulk-picks the oldest items worth `core_fill` of each quota, packs them, gives back what did not fit, then tops
    up the gaps. Returns (items int64 [k, 5]: (source, tokens, ticket, sample, bin), how many bulk items were left out).
    """
    n_src = len(n)
    items = np.zeros((n.sum() + 1 + moves, 5), dtype=np.int64)
    count = 0
    got = np.zeros(n_src)
    for s in range(n_src):
        if not active[s] or quotas[s] <= 0:
            continue
        budget = core_fill * quotas[s]
        total = 0.0
        k = 0
        while k < n[s]:
            m = fifo_tokens[s, k] if by_tokens else 1
            if total + m > budget and budget - total <= total + m - budget:
                break
            total += m
            k += 1
        if k == 0:
            continue
        # the k oldest items are exactly those with a ticket below the (k+1)-th oldest: one compaction pass
        limit = fifo[s, k] if k < n[s] else fifo[s, k - 1] + 1
        w = 0
        for i in range(n[s]):
            ticket = key[s, i] & TICKET_MASK
            if ticket < limit:
                items[count, 0] = s
                items[count, 1] = key[s, i] >> TICKET_BITS
                items[count, 2] = ticket
                items[count, 3] = sample[s, i]
                count += 1
            else:
                key[s, w] = key[s, i]
                sample[s, w] = sample[s, i]
                w += 1
        fifo[s, : n[s] - k] = fifo[s, k : n[s]].copy()
        fifo_tokens[s, : n[s] - k] = fifo_tokens[s, k : n[s]].copy()
        n[s] -= k
    where = run_kernel(kernel, items[:count, 1].copy(), seq_len, bins)
    unplaced = 0
    room = np.full(bins, seq_len, dtype=np.int64)
    head = np.full(bins, -1, dtype=np.int64)
    nxt = np.full(len(items), -1, dtype=np.int64)
    for i in range(count):
        b = where[i]
        items[i, 4] = b
        s = items[i, 0]
        if b < 0:
            unplaced += 1
            insert_back(key, sample, fifo, fifo_tokens, n, s, items[i, 1], items[i, 2], items[i, 3])
        else:
            room[b] -= items[i, 1]
            nxt[i] = head[b]
            head[b] = i
            got[s] += items[i, 1] if by_tokens else 1
    left = quotas - got
    count = top_up(key, sample, fifo, fifo_tokens, n, items, head, nxt, room, left, active, by_tokens, slack, count)
    count, _ = balance(
        key, sample, fifo, fifo_tokens, n, items, count, room, weights, carry, active, by_tokens, tol, moves, may_lose
    )
    keep = items[:count, 4] >= 0
    return items[:count][keep], unplaced


@njit(cache=True)
def single_window(key, sample, fifo, fifo_tokens, n, weights, placed, active, by_tokens, bins):  # noqa: ANN001, ANN201
    """One sample per sequence: each slot goes to the active source with the largest deficit, its oldest item."""
    items = np.zeros((bins, 5), dtype=np.int64)
    placed = placed.copy()
    count = 0
    for b in range(bins):
        best, best_s = -np.inf, -1
        for s in range(len(n)):
            if active[s] and n[s] > 0:
                deficit = weights[s] * placed.sum() - placed[s]
                if deficit > best:
                    best, best_s = deficit, s
        if best_s < 0:
            break
        tokens, ticket, smp = take_oldest(key, sample, fifo, fifo_tokens, n, best_s)
        count = put_item(items, count, best_s, tokens, ticket, smp, b)
        placed[best_s] += tokens if by_tokens else 1
    return items[:count]


def _lookahead_size(sources: list[SourceInput], spec: PlanSpec) -> int:
    """LOOKAHEAD, or twice the samples one window can hold when that is more (judged from the first samples)."""
    probe = [float(np.mean(np.minimum(s.lengths[:1000], spec.seq_len))) for s in sources if len(s.lengths)]
    per_window = spec.window * spec.seq_len / max(min(probe, default=1.0), 1.0)
    return max(LOOKAHEAD, int(2 * per_window))


def _check_sources(sources: list[SourceInput]) -> None:
    if not sources:
        raise ValueError("sources: need at least one source")
    names = [s.name for s in sources]
    for i, s in enumerate(sources):
        where = f"sources[{i}] ({s.name!r})"
        if names.count(s.name) > 1:
            raise ValueError(f"{where}: duplicate source name")
        if not (s.weight > 0 and math.isfinite(s.weight)):
            raise ValueError(f"{where}: weight must be > 0, got {s.weight}")
        if np.ndim(s.lengths) != 1:
            raise ValueError(f"{where}: lengths must be 1-D")
        if s.images is not None and len(s.images) != len(s.lengths):
            raise ValueError(f"{where}: images has {len(s.images)} rows, lengths {len(s.lengths)}")
        if s.turn_ends is not None and len(s.turn_ends[0]) != len(s.lengths) + 1:
            raise ValueError(f"{where}: turn_ends offsets need {len(s.lengths) + 1} entries")
        if s.max_epochs is not None and not s.max_epochs > 0:
            raise ValueError(f"{where}: max_epochs must be > 0, got {s.max_epochs}")
