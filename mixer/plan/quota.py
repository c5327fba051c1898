"""Per-window shares: cumulative targets per source, and the share-aware top-up that fills a window's gaps.

A weight `w_s` (normalised over the active sources) is a share of the stage's measure — tokens or samples, as the
spec's `weight_by` says — that holds in every window of `window` consecutive packed sequences. The quota of source
`s` for the next window is `w_s * (M + C) - M_s`: its share of everything placed so far plus one more window, less
what it already has (`M`, `M_s` are the placed measures since the weights last changed, `C` is one window's
capacity). Because each quota starts from what was *really placed*, an error made in one window is paid back in the
next instead of accumulating over the stage.

When a source is exhausted (it hit `max_epochs`), the others are renormalised and the targets restart from the
totals at that point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from mixer.plan.order import TICKET_BITS, insert, largest_in, remove_at, take_oldest


def normalise(weights: list[float] | np.ndarray, active: list[bool] | np.ndarray) -> np.ndarray:
    """Weights of the active sources scaled to sum to 1; inactive sources get 0."""
    w = np.where(np.asarray(active, dtype=bool), np.asarray(weights, dtype=np.float64), 0.0)
    total = w.sum()
    return w / total if total > 0 else w


@dataclass
class Targets:
    """Cumulative targets since the last renormalisation."""

    weights: np.ndarray  # normalised, 0 for inactive sources
    base: np.ndarray = field(init=False)  # placed measure per source when these weights took effect
    placed: np.ndarray = field(init=False)  # placed measure per source, whole stage

    def __post_init__(self) -> None:
        self.base = np.zeros(len(self.weights))
        self.placed = np.zeros(len(self.weights))

    def quotas(self, capacity: float) -> np.ndarray:
        """Measure each source should add in a window that adds `capacity` in all."""
        since = self.placed - self.base
        return self.weights * (since.sum() + capacity) - since

    def owed(self) -> np.ndarray:
        """What each source is owed (negative: ahead) from the windows placed since the weights took effect."""
        since = self.placed - self.base
        return self.weights * since.sum() - since

    def record(self, got: np.ndarray) -> None:
        self.placed += got

    def reweight(self, weights: np.ndarray) -> None:
        self.weights = weights
        self.base = self.placed.copy()


@njit(cache=True)
def put_item(items, count, source, tokens, ticket, smp, b):  # noqa: ANN001, ANN201
    """Write item `count` (an ITEM record) of source `source` in bin `b`; return the new item count."""
    it = items[count]
    it.source = source
    it.tokens = tokens
    it.ticket = ticket
    it.sample = smp
    it.bin = b
    return count + 1


@njit(cache=True)
def _append(bins, count, source, tokens, ticket, smp, b):  # noqa: ANN001, ANN202
    """Add an item to the front of bin `b`'s linked list; return the new item count."""
    bins.nxt[count] = bins.head[b]
    bins.head[b] = count
    return put_item(bins.items, count, source, tokens, ticket, smp, b)


@njit(cache=True)
def top_up(free, bins, count, left, goal, slack):  # noqa: ANN001, ANN201
    """Fill the gaps (`bins.room`) of packed bins from the free items, steering each to the sources below quota.

    First every source still owed at least half an item puts items into the roomiest sequences. Then, gap by gap,
    the move that fills the gap most wins: an *insert* (a free item that fits) or an *upgrade* (an item of the
    sequence swapped for a longer free item of the same source; the shorter one goes back to the lookahead); among
    equal fills, the source with the most quota `left`. That pass allows only moves within each source's quota; a
    second lets a source overshoot by up to `slack` (in the weight_by measure), trading that much share error —
    repaid by the next window's quota — for packing efficiency.

    Mutates `free`, `bins` and `left` (float64 [S]); returns the new item count.
    """
    items, head, nxt, room = bins
    key, n = free.key, free.n
    active, by_tokens = goal.active, goal.by_tokens
    n_src = len(left)
    count = _meet_quotas(free, bins, count, left, goal)
    order = np.argsort(-room, kind="mergesort")
    for p in range(2):
        extra = 0.0 if p == 0 else slack
        for b in order:
            while room[b] > 0:
                by_need = np.argsort(-left, kind="mergesort")
                best_gain, best_s, best_pos, best_item = 0, -1, -1, -1
                for r in range(n_src):
                    s = by_need[r]
                    if not active[s]:
                        continue
                    allowed = left[s] + extra
                    cap = min(room[b], int(np.floor(allowed))) if by_tokens else (room[b] if allowed >= 1 else 0)
                    pos = largest_in(free, s, best_gain, cap)
                    if pos >= 0:
                        best_gain, best_s, best_pos, best_item = key[s, pos] >> TICKET_BITS, s, pos, -1
                        if best_gain == room[b]:
                            break
                    up = min(room[b], int(np.floor(allowed))) if by_tokens else room[b]
                    i = head[b]
                    while i >= 0:
                        if items[i].source == s:
                            have = items[i].tokens
                            pos = largest_in(free, s, have + best_gain, have + up)
                            if pos >= 0:
                                best_gain, best_s, best_pos, best_item = (key[s, pos] >> TICKET_BITS) - have, s, pos, i
                        i = nxt[i]
                    if best_gain == room[b]:
                        break
                if best_s < 0:
                    break
                tokens, ticket, smp = remove_at(free, best_s, best_pos)
                if best_item < 0:
                    count = _append(bins, count, best_s, tokens, ticket, smp, b)
                    left[best_s] -= tokens if by_tokens else 1
                else:
                    it = items[best_item]
                    insert(free, best_s, it.tokens, it.ticket, it.sample)
                    if by_tokens:
                        left[best_s] -= tokens - it.tokens
                    it.tokens = tokens
                    it.ticket = ticket
                    it.sample = smp
                room[b] -= best_gain
    for b in order:  # a sequence must hold something: an empty one takes the oldest item of the most-owed source
        if head[b] >= 0:
            continue
        by_need = np.argsort(-left, kind="mergesort")
        for r in range(n_src):
            s = by_need[r]
            if active[s] and n[s] > 0:
                tokens, ticket, smp = take_oldest(free, s)
                count = _append(bins, count, s, tokens, ticket, smp, b)
                left[s] -= tokens if by_tokens else 1
                room[b] -= tokens
                break
    return count


@njit(cache=True)
def _meet_quotas(free, bins, count, left, goal):  # noqa: ANN001, ANN201
    """Insert items of the most-owed source into the roomiest sequence while it is owed at least half an item."""
    key, n, room = free.key, free.n, bins.room
    done = ~goal.active.copy()
    while True:
        best, s = -np.inf, -1
        for r in range(len(left)):
            if not done[r] and n[r] > 0 and left[r] > best:
                best, s = left[r], r
        if s < 0:
            return count
        smallest = key[s, 0] >> TICKET_BITS
        owed = left[s] if goal.by_tokens else left[s] * smallest
        if owed < smallest / 2:
            done[s] = True
            continue
        b = np.argmax(room)
        pos = largest_in(free, s, 0, min(room[b], int(owed + smallest / 2)))
        if pos < 0:
            done[s] = True
            continue
        tokens, ticket, smp = remove_at(free, s, pos)
        count = _append(bins, count, s, tokens, ticket, smp, b)
        left[s] -= tokens if goal.by_tokens else 1
        room[b] -= tokens
