"""Epoch order inside a window: which samples a source's items carry, and a sequence order in epoch order.

A window may finish a source's epoch and start the next (`Lookahead.cross`). Items of one source with equal tokens
are interchangeable, so `relabel` gives the old-epoch samples to the sequences emitted first; `epoch_order` then
moves sequences, close to the share-keeping order `emit_order` chose, so that a source's old-epoch items come before
its new ones: old-only sequences, sequences spanning two epochs, new-only ones. When the packing mixes the epochs in
more than one sequence no order can, and the planner keeps the window's own order (the guarantee is per window).
"""

from __future__ import annotations

import numpy as np


def relabel(items: np.ndarray, bins: np.ndarray, order: np.ndarray, crossing: list[int]) -> None:
    """Give a crossing source's items of equal tokens their samples oldest-first in emission order, in place.

    Items of one source with the same tokens are interchangeable for packing and shares, so which of them carries
    which sample (and ticket) is free: the oldest draws go to the sequences emitted first. With equal lengths this
    alone puts every old-epoch item before every new one. `items` rows are (source, tokens, ticket, sample, bin).
    """
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    for s in crossing:
        mine = np.flatnonzero(items[:, 0] == s)
        tokens = items[mine, 1]
        slots = mine[np.lexsort((mine, rank[bins[mine]], tokens))]  # by tokens, then by emission position
        ids = mine[np.lexsort((items[mine, 2], tokens))]  # by tokens, then by ticket
        items[slots, 2:4] = items[ids, 2:4].copy()


def epoch_order(order: np.ndarray, bins: np.ndarray, source: np.ndarray, epoch: np.ndarray, crossing: list[int]):  # noqa: ANN201
    """`order` (bins in emission order) moved so each crossing source's items come in epoch order, or None.

    `bins`, `source`, `epoch` describe the window's items. Per crossing source, the sequences holding its items
    keep their slots in `order` and are re-sorted among themselves (stably) by their items' (lowest, highest)
    epoch; other sequences do not move. The order is valid when, per crossing source, no sequence holds an item of
    an epoch older than the newest of a sequence before it (inside a sequence items are emitted in epoch order).
    """
    pos = order.copy()
    k = len(order)
    for s in crossing:
        lo, hi, held = _span(bins, source == s, epoch, k)
        slots = np.flatnonzero(held[pos])
        chosen = pos[slots]
        pos[slots] = chosen[np.lexsort((hi[chosen], lo[chosen]))]
    for s in crossing:  # a later source's re-sort may have undone an earlier one's
        lo, hi, held = _span(bins, source == s, epoch, k)
        seq = pos[held[pos]]
        if seq.size > 1 and (hi[seq[:-1]] > lo[seq[1:]]).any():
            return None
    return pos


def _span(bins: np.ndarray, mine: np.ndarray, epoch: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sequence: the lowest and highest epoch of the source's items in it, and whether it holds any."""
    lo = np.full(k, np.iinfo(np.int64).max)
    hi = np.full(k, -1, dtype=np.int64)
    np.minimum.at(lo, bins[mine], epoch[mine])
    np.maximum.at(hi, bins[mine], epoch[mine])
    return lo, hi, hi >= 0
