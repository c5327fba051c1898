"""Per-window share repair after packing, and the order a window's sequences are emitted in.

`balance` takes a packed window and moves items between it and the lookahead until every source's share of the
window's measure (tokens or samples) is within `tol` of its weight, or no move helps. Each step looks only at the
source furthest from its weight and tries every move that changes it: insert a free item into a gap, take an item
out, swap an item for one of another source in the same sequence, or swap it for a shorter or longer item of its
own source. The move that brings the worst deviation down most wins (ties: the one that keeps more tokens).
Packing pays for it only where the packer's window was off its shares.

`emit_order` orders a window's sequences so that its prefixes, and the runs of `window` sequences that start in the
previous window, stay close to the weights. The aligned windows hold `tol`; a straddling run cannot do as well,
since one sequence holds only a few samples (on the LLaVA-like bench mix ~1.5–1.8 pp worst against 2.2–2.5 with
packing order).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mixer.plan.order import TICKET_BITS, insert, remove_at
from mixer.plan.quota import put_item


@njit(cache=True)
def _worst(got, weights, active, total):  # noqa: ANN001, ANN202
    """(max, sum of squares) over active sources of |got_s / total - w_s| (shares, not percentage points)."""
    worst, sq = 0.0, 0.0
    for s in range(len(got)):
        if active[s] or got[s] > 0:
            d = abs(got[s] / total - weights[s])
            sq += d * d
            if d > worst:
                worst = d
    return worst, sq


@njit(cache=True)
def _better(w, q, tot, best_w, best_q, best_tot):  # noqa: ANN001, ANN202
    """Is (worst, squares, total) better than the best so far: a lower worst, then lower squares, then more total."""
    if w < best_w - 1e-12:
        return True
    if w > best_w + 1e-12:
        return False
    if q < best_q - 1e-15:
        return True
    return q <= best_q + 1e-15 and tot > best_tot


@njit(cache=True)
def _near(free, s, target, lo, hi):  # noqa: ANN001, ANN202
    """Positions in row `s` of the free items nearest `target` from below and above, within lo < tokens <= hi."""
    key, m = free.key, free.n[s]
    below, above = -1, -1
    if hi <= lo or m == 0:
        return below, above
    t = min(max(target, lo + 1), hi)
    i = np.searchsorted(key[s, :m], (t << TICKET_BITS) | ((1 << TICKET_BITS) - 1), side="right") - 1
    if i >= 0 and (key[s, i] >> TICKET_BITS) > lo:
        below = np.searchsorted(key[s, :m], (key[s, i] >> TICKET_BITS) << TICKET_BITS)  # oldest among equals
    j = np.searchsorted(key[s, :m], t << TICKET_BITS)
    if j < m and (key[s, j] >> TICKET_BITS) <= hi:
        above = j
    return below, above


@njit(cache=True)
def _score(got, weights, active, carry, half, coarse, a, ma, b, mb):  # noqa: ANN001, ANN202
    """(worst, squares, total) after source `a` loses `ma` and source `b` gains `mb` (either may be -1).

    For a coarse source (`coarse`: its samples are large against `tol`) a move that takes it further than
    half a sample from its cumulative target (its share of the window plus what it is owed from earlier windows,
    `carry`) scores infinite: such a window may be off its weights by a rounding the next window repays, but the
    stage's shares must not drift. A fine-grained source is held within `tol` in every window instead.
    """
    before = got.sum()
    if a >= 0:
        got[a] -= ma
    if b >= 0:
        got[b] += mb
    total = got.sum()
    worst, sq = _worst(got, weights, active, total) if total > 0 else (np.inf, np.inf)
    for x in (a, b):
        if x >= 0 and coarse[x]:
            now = abs(got[x] - weights[x] * total - carry[x])
            was = abs(got[x] + (ma if x == a else 0.0) - (mb if x == b else 0.0) - weights[x] * before - carry[x])
            if now > max(was, half[x]) + 1e-9:
                worst = np.inf
    if a >= 0:
        got[a] += ma
    if b >= 0:
        got[b] -= mb
    return worst, sq, total


@njit(cache=True)
def balance(free, bins, count, goal, limits):  # noqa: ANN001, ANN201
    """Repair the shares of one packed window (`bins.items[:count]`) in place; returns (new item count, moves made).

    An item taken out gets bin -1 (`bins.head`/`nxt` are not kept up to date). A bin never loses its last item.
    Moves stop when every share is within `limits.tol` of its weight or after `limits.moves`. Moves that give up
    tokens are made only while the worst source is further from its target (its weight plus `goal.owed`) than
    rounding to whole samples explains, and give up at most `limits.may_lose` tokens of the window in all, so
    packing is not traded for a bound the lengths cannot give (equal-length samples, say).
    """
    key, n, items, room = free.key, free.n, bins.items, bins.room
    weights, carry, active, by_tokens = goal.weights, goal.owed, goal.active, goal.by_tokens
    tol, max_moves, budget = limits.tol, limits.moves, limits.may_lose
    n_src = len(weights)
    per_bin = np.zeros(len(room), dtype=np.int64)
    got = np.zeros(n_src)
    for i in range(count):
        if items[i].bin >= 0:
            per_bin[items[i].bin] += 1
            got[items[i].source] += items[i].tokens if by_tokens else 1
    moves, lost = 0, 0
    half = np.zeros(n_src)
    coarse = np.zeros(n_src, dtype=np.bool_)
    while moves < max_moves:
        total = got.sum()
        if total <= 0:
            break
        now, now_sq = _worst(got, weights, active, total)
        if now <= tol:
            break
        m, far = -1, -1.0  # the source furthest from its weight
        for s in range(n_src):
            d = abs(got[s] / total - weights[s])
            if (active[s] or got[s] > 0) and d > far:
                m, far = s, d
        over = got[m] / total > weights[m]
        # best move so far (see _better); kind 0 insert, 1 take out, 2 swap; window item bi, free item (row br, pos bp)
        best, best_sq, best_total, kind, bi, br, bp = now, now_sq, np.inf, -1, -1, -1, -1
        # giving up tokens is worth it only while m is further from its target than rounding to whole samples
        # explains: below that the lengths themselves set the bound (equal-length samples, say), and packing is kept
        for s in range(n_src):
            half[s] = 0.5 * ((key[s, 0] >> TICKET_BITS if n[s] > 0 else 0) if by_tokens else 1)
            # coarse: by tokens, half its shortest sample is more than `tol` (other lengths of the same source fine-
            # tune a share); by samples, one sample is (whole samples are the only step)
            coarse[s] = (half[s] if by_tokens else 2 * half[s]) > tol * total
        if coarse[m]:  # rounding to whole samples may leave it up to one sample off
            lossy = abs(got[m] - weights[m] * total - carry[m]) > 2 * half[m]
        else:
            lossy = abs(got[m] - weights[m] * total) > half[m]
        share = max(1e-9, 1.0 - weights[m])
        need = abs(got[m] - weights[m] * total) / share  # measure that would bring `m` onto its weight
        if not over and active[m]:
            # insert an item of m into the roomiest bin
            b = np.argmax(room)
            target = int(need) if by_tokens else room[b]
            for pos in _near(free, m, target, 0, room[b]):
                if pos >= 0:
                    t = key[m, pos] >> TICKET_BITS
                    w, q, tot = _score(got, weights, active, carry, half, coarse, -1, 0.0, m, t if by_tokens else 1.0)
                    if _better(w, q, tot, best, best_sq, best_total):
                        best, best_sq, best_total, kind, bi, br, bp = w, q, tot, 0, -1, m, pos
        for i in range(count):
            b = items[i].bin
            if b < 0 or (over and items[i].source != m):  # over: only m's items can help; under: any item
                continue
            s, t = items[i].source, items[i].tokens
            mt = t if by_tokens else 1.0
            hi = t + room[b]
            if over and s == m and per_bin[b] > 1 and lossy and lost + t <= budget:  # take it out
                w, q, tot = _score(got, weights, active, carry, half, coarse, m, mt, -1, 0.0)
                if _better(w, q, tot, best, best_sq, best_total):
                    best, best_sq, best_total, kind, bi, br, bp = w, q, tot, 1, i, -1, -1
            for r in range(n_src):
                if not active[r] or n[r] == 0:
                    continue
                if r == s:  # the same source: a shorter item (m over) or a longer one (m under), by tokens only
                    if s != m or not by_tokens:
                        continue
                    lo, top, target = (0, t - 1, t - int(need)) if over else (t, hi, t + int(need))
                elif over or r == m:  # m's item for another source's (over), another's for m's (under)
                    lo, top, target = 0, hi, t
                else:
                    continue
                below, above = _near(free, r, target, lo, top)
                fits = _near(free, r, top, lo, top)[0] if r != s else -1  # the largest that fits: no packing lost
                for pos in (below, above, fits):
                    if pos < 0:
                        continue
                    x = key[r, pos] >> TICKET_BITS
                    if t > x and not (lossy and lost + t - x <= budget):
                        continue
                    w, q, tot = _score(got, weights, active, carry, half, coarse, s, mt, r, x if by_tokens else 1.0)
                    if _better(w, q, tot, best, best_sq, best_total):
                        best, best_sq, best_total, kind, bi, br, bp = w, q, tot, 2, i, r, pos
        if kind < 0:  # no move lowers the worst deviation (or, at equal worst, the squares)
            break
        if kind == 0:
            b = np.argmax(room)
            t, ticket, smp = remove_at(free, br, bp)
            # the fullest bin that takes it
            for c in range(len(room)):
                if room[c] >= t and room[c] < room[b]:
                    b = c
            count = put_item(items, count, br, t, ticket, smp, b)
            room[b] -= t
            lost -= t
            per_bin[b] += 1
            got[br] += t if by_tokens else 1
        elif kind == 1:
            it = items[bi]
            b, s, t = it.bin, it.source, it.tokens
            insert(free, s, t, it.ticket, it.sample)
            it.bin = -1
            room[b] += t
            lost += t
            per_bin[b] -= 1
            got[s] -= t if by_tokens else 1
        else:
            it = items[bi]
            b, s, t = it.bin, it.source, it.tokens
            x, ticket, smp = remove_at(free, br, bp)
            insert(free, s, t, it.ticket, it.sample)
            it.source = br
            it.tokens = x
            it.ticket = ticket
            it.sample = smp
            room[b] += t - x
            lost += t - x
            got[s] -= t if by_tokens else 1
            got[br] += x if by_tokens else 1
        moves += 1
    return count, moves


@njit(cache=True)
def emit_order(per_bin, weights, prev):  # noqa: ANN001, ANN201
    """An order of a window's bins (rows of `per_bin`: measure per source) that keeps runs near the weights.

    Greedy: next comes the bin that minimises the squared deviations (measure minus weight × total, per source) of
    the window's prefix so far and of the run of as many sequences ending there, which starts in the previous
    window (`prev`: its bins' measures in emitted order; empty for the first window). Ties: the lower bin number.
    """
    k, n_src = per_bin.shape
    # suffix[i]: the deviation of prev's bins i.. (zero rows past its end)
    suffix = np.zeros((len(prev) + 1, n_src))
    for i in range(len(prev) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + prev[i] - weights * prev[i].sum()
    used = np.zeros(k, dtype=np.bool_)
    acc = np.zeros(n_src)
    order = np.empty(k, dtype=np.int64)
    for step in range(k):
        carried = suffix[max(0, len(prev) - (k - step - 1))]
        best, best_b = np.inf, -1
        for b in range(k):
            if used[b]:
                continue
            total = acc.sum() + per_bin[b].sum()
            cost = 0.0
            for s in range(n_src):
                d = acc[s] + per_bin[b, s] - weights[s] * total
                e = d + carried[s]
                cost += d * d + e * e
            if cost < best:
                best, best_b = cost, b
        used[best_b] = True
        acc += per_bin[best_b]
        order[step] = best_b
    return order
