"""Bin packing of sample lengths into sequences of `capacity` tokens: best-fit and first-fit decreasing.

Pure functions over an array of lengths. Items are taken longest first (ties by input position, so the result is a
function of the input alone). With `bins=None` new bins open as needed; with a fixed `bins` an item that fits in no
bin is left out (bin -1), which is how the planner packs one window of `window` sequences. Each public function
carries the number of its compiled kernel (`run_kernel`; `bins=-1` means open bins) for the planner's compiled code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

_SHIFT = 32  # a bin key is room << _SHIFT | bin: keys sort by room left, then by bin number
_LOW = (1 << _SHIFT) - 1


@njit(cache=True)
def _bfd(lengths: np.ndarray, capacity: int, bins: int) -> np.ndarray:
    n = len(lengths)
    order = np.argsort(-lengths, kind="mergesort")
    out = np.full(n, -1, dtype=np.int64)
    keys = np.empty(max(bins if bins >= 0 else n, 1), dtype=np.int64)
    m = 0
    for b in range(max(bins, 0)):
        keys[m] = capacity << _SHIFT | b
        m += 1
    opened = m
    for i in order:
        size = lengths[i]
        if size > capacity:
            continue
        k = np.searchsorted(keys[:m], size << _SHIFT)
        if k < m:
            key = keys[k]
            b = key & _LOW
            room = (key >> _SHIFT) - size
            keys[k : m - 1] = keys[k + 1 : m].copy()
            m -= 1
        elif bins < 0:
            b = opened
            opened += 1
            room = capacity - size
        else:
            continue
        out[i] = b
        new = room << _SHIFT | b
        j = np.searchsorted(keys[:m], new)
        keys[j + 1 : m + 1] = keys[j:m].copy()
        keys[j] = new
        m += 1
    return out


@njit(cache=True)
def _ffd(lengths: np.ndarray, capacity: int, bins: int) -> np.ndarray:
    n = len(lengths)
    order = np.argsort(-lengths, kind="mergesort")
    out = np.full(n, -1, dtype=np.int64)
    leaves = bins if bins >= 0 else n
    width = 1
    while width < max(leaves, 1):
        width *= 2
    # max-tree over the room of each bin; with open bins every not-yet-used bin has full room, so the leftmost
    # fitting leaf is either an open bin or the next new one
    tree = np.full(2 * width, -1, dtype=np.int64)
    tree[width : width + leaves] = capacity
    for v in range(width - 1, 0, -1):
        tree[v] = max(tree[2 * v], tree[2 * v + 1])
    for i in order:
        size = lengths[i]
        if tree[1] < size:
            continue
        v = 1
        while v < width:
            v = 2 * v if tree[2 * v] >= size else 2 * v + 1
        out[i] = v - width
        tree[v] -= size
        v //= 2
        while v >= 1:
            tree[v] = max(tree[2 * v], tree[2 * v + 1])
            v //= 2
    return out


def _lengths(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(lengths, dtype=np.int64)
    if values.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {values.shape}")
    return values


def best_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int, bins: int | None = None) -> np.ndarray:
    """Bin of each item (int64 [n], -1 if it fits nowhere): each item, longest first, goes to the fullest bin it fits.

    Among equally full bins the lowest-numbered wins; with `bins=None` a new bin opens when none fits.
    """
    return _bfd(_lengths(lengths), int(capacity), -1 if bins is None else int(bins))


def first_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int, bins: int | None = None) -> np.ndarray:
    """Bin of each item (int64 [n], -1 if it fits nowhere): each item, longest first, goes to the first bin it fits.

    Bins are tried lowest-numbered first; with `bins=None` a new bin opens when none has room.
    """
    return _ffd(_lengths(lengths), int(capacity), -1 if bins is None else int(bins))


@njit(cache=True)
def run_kernel(kernel_id: int, lengths: np.ndarray, capacity: int, bins: int) -> np.ndarray:
    """The compiled packer `kernel_id` (0 best fit, 1 first fit) on `lengths`; `bins=-1` opens bins as needed.

    Compiled callers name the packer by number: numba cannot cache a function that takes another as an argument.
    """
    if kernel_id == 0:
        return _bfd(lengths, capacity, bins)
    return _ffd(lengths, capacity, bins)


best_fit_decreasing.kernel_id = 0  # type: ignore[attr-defined]
first_fit_decreasing.kernel_id = 1  # type: ignore[attr-defined]
