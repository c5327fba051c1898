"""The planner's state as named structures for its compiled kernels: items, free items, bins, goal and limits.

An item is a record (`ITEM`); the lookahead's free items (`Free`), a window being packed (`Bins`), what a window aims
at (`Goal`) and the limits of its packing (`Limits`) are NamedTuples.

numba compiles NamedTuples of arrays and numpy records as tightly as loose arguments and caches them on disk (a
jitclass is not cached), so each kernel takes these few names instead of a long positional list.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# one item of a window: a draw of a source (`ticket`: its draw number) placed in sequence `bin` (-1: taken out)
ITEM = np.dtype([("source", "<i8"), ("tokens", "<i8"), ("ticket", "<i8"), ("sample", "<i8"), ("bin", "<i8")])


def items(n: int) -> np.ndarray:
    """An empty ITEM array of `n` rows."""
    return np.zeros(n, dtype=ITEM)


class Free(NamedTuple):
    """A lookahead's free items (`order.Lookahead`): row `s` holds `n[s]` of them, in two orders."""

    key: np.ndarray  # int64 [S, width]: tokens << TICKET_BITS | ticket, ascending (best-fit searches)
    sample: np.ndarray  # int64 [S, width]: the sample of each key
    fifo: np.ndarray  # int64 [S, width]: tickets, oldest first (the bulk pass)
    fifo_tokens: np.ndarray  # int64 [S, width]: the tokens of each fifo entry
    n: np.ndarray  # int64 [S]: free items per row


class Bins(NamedTuple):
    """A window being packed: its items, and per sequence (bin) a linked list of them and the tokens still free."""

    items: np.ndarray  # ITEM [capacity]
    head: np.ndarray  # int64 [bins]: a bin's last-added item, -1 when empty
    nxt: np.ndarray  # int64 [capacity]: the item added to the same bin before this one, -1 at the end
    room: np.ndarray  # int64 [bins]: tokens left


class Goal(NamedTuple):
    """What a window aims at, in the spec's `weight_by` measure (tokens or samples)."""

    quotas: np.ndarray  # float64 [S]: measure each source should add in this window (`quota.Targets.quotas`)
    weights: np.ndarray  # float64 [S]: normalised weights, 0 for inactive sources
    owed: np.ndarray  # float64 [S]: what each source is owed from earlier windows (negative: ahead)
    active: np.ndarray  # bool [S]
    by_tokens: bool
    capacity: int  # tokens a sequence (bin) holds: seq_len, or a micro batch's budget
    bins: int  # sequences in the window


class Limits(NamedTuple):
    """How one window is packed: the bulk share, the top-up's overshoot and the repair's bounds."""

    core_fill: float  # share of each quota taken in the bulk pass
    slack: float  # measure a source may go past its quota to fill a gap
    tol: float  # the repair stops when every share is within this of its weight
    moves: int  # at most this many repair moves
    may_lose: int  # ... giving up at most this many token slots
