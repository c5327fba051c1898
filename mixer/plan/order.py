"""Seeded per-source sample streams with epochs, overlong handling, and the lookahead the planner picks from.

Source `s` is read in epochs; epoch `e` is a permutation of its samples drawn from `numpy.random.default_rng((seed,
s, e))`, so the order of every source is a pure function of (seed, source position, epoch). Samples are drawn
lazily, a few hundred at a time, into a *lookahead* of free items; only one epoch's permutation (int32 for sources
under 2**31 samples) is held at a time. A lookahead row holds one epoch: the next one is drawn only into an empty
row, or into a reserve that a window finishing the epoch may use (`Lookahead.cross`, see the planner). The planner
takes the oldest free items for the bulk of a window and may take any free item of the row to fill a gap.

A sample longer than `seq_len` is cut at its largest turn end <= seq_len (`overlong="truncate"`, when turn ends are
given and one fits) or else dropped; drops are counted as samples are drawn. `max_epochs` caps the number of draws
at floor(max_epochs * n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

TICKET_BITS = 40  # a free item's key is tokens << TICKET_BITS | ticket: sorts by tokens, then by draw order
TICKET_MASK = (1 << TICKET_BITS) - 1


@dataclass
class Counts:
    """What a stream has drawn so far."""

    drawn: int = 0
    dropped: int = 0
    truncated: int = 0


@dataclass
class SourceStream:
    """One source's seeded order, drawn a batch at a time.

    `draw(k)` gives the next k draws as (tickets, samples, tokens) after overlong handling; a ticket is the draw's
    number, counted over epochs.
    """

    position: int
    name: str
    lengths: np.ndarray
    seed: int
    seq_len: int
    overlong: str
    turn_ends: tuple[np.ndarray, np.ndarray] | None = None
    max_epochs: float | None = None
    counts: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        self.n = len(self.lengths)
        self.cap = None if self.max_epochs is None else math.floor(self.max_epochs * self.n)
        self._epoch = -1
        self._perm = np.zeros(0, dtype=np.int32)
        self._since_kept = 0
        self.dead = self.n == 0  # every sample is dropped (or there are none): nothing more can come

    def epoch_drawn(self) -> bool:
        """True when the current epoch is drawn to its end (the next draw starts a new epoch)."""
        return self.counts.drawn > 0 and self.counts.drawn % self.n == 0

    def capped(self) -> bool:
        """True when no further sample can be drawn (max_epochs reached, or every sample is dropped)."""
        return self.dead or (self.cap is not None and self.counts.drawn >= self.cap)

    def draw(self, want: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to `want` draws (fewer at an epoch's end or at the cap), overlong ones cut or dropped."""
        drawn = self.counts.drawn
        epoch, offset = divmod(drawn, self.n)
        if epoch != self._epoch:
            self._perm = _permutation(self.n, self.seed, self.position, epoch)
            self._epoch = epoch
        stop = min(self.n, offset + want)
        if self.cap is not None:
            stop = min(stop, offset + self.cap - drawn)
        samples = self._perm[offset:stop].astype(np.int64)
        tokens = np.asarray(self.lengths[samples], dtype=np.int64)
        if tokens.size and tokens.min() <= 0:
            bad = int(samples[int(np.argmin(tokens))])
            raise ValueError(f"source {self.name!r}: sample {bad} has length {int(self.lengths[bad])} (must be > 0)")
        kept = np.ones(len(samples), dtype=bool)
        for j in np.flatnonzero(tokens > self.seq_len).tolist():
            cut = self._cut(int(samples[j]))
            if cut is None:
                kept[j] = False
                self.counts.dropped += 1
            else:
                tokens[j] = cut
                self.counts.truncated += 1
        tickets = np.arange(drawn, drawn + len(samples), dtype=np.int64)
        self.counts.drawn = drawn + len(samples)
        self._since_kept = 0 if kept.any() else self._since_kept + len(samples)
        if self._since_kept >= self.n:
            self.dead = True
        return tickets[kept], samples[kept], tokens[kept]

    def _cut(self, sample: int) -> int | None:
        if self.overlong != "truncate" or self.turn_ends is None:
            return None
        offsets, values = self.turn_ends
        ends = np.asarray(values[int(offsets[sample]) : int(offsets[sample + 1])])
        ends = ends[(ends > 0) & (ends <= self.seq_len)]
        return int(ends.max()) if ends.size else None


class Lookahead:
    """The free items of every source, as arrays the compiled planner kernels work on.

    Row `s` holds source `s`'s `n[s]` free items twice: `key`/`sample` sorted by (tokens, ticket) for best-fit
    searches, and `fifo`/`fifo_tokens` sorted by ticket (oldest first) for the bulk pass.
    """

    def __init__(self, sources: int, size: int) -> None:
        self.size = size
        width = 2 * size
        self.key = np.zeros((sources, width), dtype=np.int64)
        self.sample = np.zeros((sources, width), dtype=np.int64)
        self.fifo = np.zeros((sources, width), dtype=np.int64)
        self.fifo_tokens = np.zeros((sources, width), dtype=np.int64)
        self.n = np.zeros(sources, dtype=np.int64)
        # the next epoch's first draws, held out of a row until its epoch is placed (see `cross`)
        self.reserve: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * sources

    def refill(self, s: int, stream: SourceStream) -> None:
        """Draw into row `s` until it holds `size` free items, the stream is capped, or its epoch is all drawn.

        A row holds one epoch: the next one enters only an empty row (or a window that places all that is left of
        the current one, `cross`), so every sample of an epoch is placed before any sample of the next one is.
        """
        if self.n[s] == 0 and self.reserve[s] is not None:  # it may span epochs: the row takes the first
            tickets = self.reserve[s][0]
            first = tickets // stream.n == (tickets[0] // stream.n if len(tickets) else 0)
            self.add(s, *(x[first] for x in self.reserve[s]))
            rest = tuple(x[~first] for x in self.reserve[s])
            self.reserve[s] = rest if len(rest[0]) else None
        while self.n[s] < self.size and not stream.capped():
            if self.n[s] and self.epoch_end(s, stream):
                break
            self.add(s, *stream.draw(int(self.size - self.n[s])))

    def cross(self, s: int, stream: SourceStream, want: float, by_tokens: bool) -> bool:
        """Add the next epochs' first draws (worth at least `want`, by tokens or samples) to row `s`.

        For a window that may finish the row's epoch: the planner keeps the window only if what it leaves in the
        row is of one epoch, none older than what it placed, and it emits every sample's placements in epoch order
        (else it undoes this with `restore`). A source far smaller than a window crosses several epochs at once.
        False when there is nothing more to draw (`max_epochs`).
        """
        if self.reserve[s] is None:
            parts, got = [], 0.0
            while got < want and self.n[s] + sum(len(p[0]) for p in parts) < 2 * self.size and not stream.capped():
                part = stream.draw(int(min(self.size, 2 * self.size - self.n[s] - sum(len(p[0]) for p in parts))))
                parts.append(part)
                got += float(part[2].sum()) if by_tokens else len(part[0])
            if not parts:
                return False
            self.reserve[s] = tuple(np.concatenate(x) for x in zip(*parts, strict=True))  # type: ignore[assignment]
        if not len(self.reserve[s][0]):
            return False
        self.add(s, *self.reserve[s])
        return True

    def epochs(self, s: int, n: int) -> int:
        """How many epochs row `s` holds items of (`n`: the source's size)."""
        m = int(self.n[s])
        return int(self.fifo[s, m - 1] // n - self.fifo[s, 0] // n + 1) if m else 0

    def hide_newer(self, s: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take every item newer than row `s`'s oldest epoch out of the row; `add` them back after the window."""
        m = int(self.n[s])
        ticket = self.key[s, :m] & TICKET_MASK
        keep = ticket // n == self.fifo[s, 0] // n
        gone = np.argsort(ticket[~keep], kind="stable")
        hidden = (ticket[~keep][gone], self.sample[s, :m][~keep][gone], (self.key[s, :m][~keep] >> TICKET_BITS)[gone])
        k = int(keep.sum())
        self.key[s, :k], self.sample[s, :k] = self.key[s, :m][keep], self.sample[s, :m][keep]
        # fifo/fifo_tokens are by ticket: the oldest epoch is their first k entries already
        self.n[s] = k
        return hidden

    def epoch_end(self, s: int, stream: SourceStream) -> bool:
        """Row `s` holds the last of its epoch: nothing more of it is left to draw."""
        return self.reserve[s] is not None or stream.epoch_drawn()

    def settle(self, s: int) -> None:
        """The window that crossed row `s` into the next epoch is kept: its reserve now lives in the row."""
        self.reserve[s] = None

    def snapshot(self) -> tuple[np.ndarray, ...]:
        return tuple(a.copy() for a in (self.key, self.sample, self.fifo, self.fifo_tokens, self.n))

    def restore(self, snap: tuple[np.ndarray, ...]) -> None:
        for a, b in zip((self.key, self.sample, self.fifo, self.fifo_tokens, self.n), snap, strict=True):
            a[...] = b

    def empty(self, s: int) -> bool:
        """No free item in row `s` and none held in reserve."""
        return self.n[s] == 0 and self.reserve[s] is None

    def add(self, s: int, tickets: np.ndarray, samples: np.ndarray, tokens: np.ndarray) -> None:
        """Merge draws newer than every free item of row `s` into it."""
        m, k = int(self.n[s]), len(tickets)
        keys = np.concatenate([self.key[s, :m], tokens << TICKET_BITS | tickets])
        smp = np.concatenate([self.sample[s, :m], samples])
        order = np.argsort(keys, kind="stable")
        self.key[s, : m + k] = keys[order]
        self.sample[s, : m + k] = smp[order]
        self.fifo[s, m : m + k] = tickets  # newer than every free item: the row stays sorted
        self.fifo_tokens[s, m : m + k] = tokens
        self.n[s] = m + k

    def give_back(self, s: int, tokens: int, ticket: int, sample: int) -> None:
        insert(self.key, self.sample, self.fifo, self.fifo_tokens, self.n, s, tokens, ticket, sample)

    def mean_tokens(self, s: int) -> float:
        m = int(self.n[s])
        return float(self.fifo_tokens[s, :m].mean()) if m else 0.0


@njit(cache=True)
def insert(key, sample, fifo, fifo_tokens, n, s, tokens, ticket, smp):  # noqa: ANN001, ANN201
    """Put an item back into row `s` of a lookahead (both orders)."""
    m = n[s]
    k = tokens << TICKET_BITS | ticket
    i = np.searchsorted(key[s, :m], k)
    key[s, i + 1 : m + 1] = key[s, i:m].copy()
    sample[s, i + 1 : m + 1] = sample[s, i:m].copy()
    key[s, i] = k
    sample[s, i] = smp
    j = np.searchsorted(fifo[s, :m], ticket)
    fifo[s, j + 1 : m + 1] = fifo[s, j:m].copy()
    fifo_tokens[s, j + 1 : m + 1] = fifo_tokens[s, j:m].copy()
    fifo[s, j] = ticket
    fifo_tokens[s, j] = tokens
    n[s] = m + 1


@njit(cache=True)
def remove_at(key, sample, fifo, fifo_tokens, n, s, i):  # noqa: ANN001, ANN201
    """Take the item at position `i` of row `s`'s (tokens, ticket) order; returns (tokens, ticket, sample)."""
    m = n[s]
    k = key[s, i]
    smp = sample[s, i]
    ticket = k & TICKET_MASK
    key[s, i : m - 1] = key[s, i + 1 : m].copy()
    sample[s, i : m - 1] = sample[s, i + 1 : m].copy()
    j = np.searchsorted(fifo[s, :m], ticket)
    fifo[s, j : m - 1] = fifo[s, j + 1 : m].copy()
    fifo_tokens[s, j : m - 1] = fifo_tokens[s, j + 1 : m].copy()
    n[s] = m - 1
    return k >> TICKET_BITS, ticket, smp


@njit(cache=True)
def take_oldest(key, sample, fifo, fifo_tokens, n, s):  # noqa: ANN001, ANN201
    """Take row `s`'s oldest free item (row must be non-empty); returns (tokens, ticket, sample)."""
    pos = np.searchsorted(key[s, : n[s]], fifo_tokens[s, 0] << TICKET_BITS | fifo[s, 0])
    return remove_at(key, sample, fifo, fifo_tokens, n, s, pos)


@njit(cache=True)
def largest_in(key, n, s, lo, hi):  # noqa: ANN001, ANN201
    """Position in row `s` of the longest free item with lo < tokens <= hi (oldest among equals), or -1."""
    if hi <= lo:
        return -1
    m = n[s]
    i = np.searchsorted(key[s, :m], (hi << TICKET_BITS) | TICKET_MASK, side="right") - 1
    if i < 0:
        return -1
    tokens = key[s, i] >> TICKET_BITS
    if tokens <= lo:
        return -1
    return np.searchsorted(key[s, :m], tokens << TICKET_BITS)


def _permutation(n: int, seed: int, position: int, epoch: int) -> np.ndarray:
    """The order of one epoch of one source: a shuffle seeded by (seed, source position, epoch)."""
    perm = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    np.random.default_rng((seed, position, epoch)).shuffle(perm)
    return perm
