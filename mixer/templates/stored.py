"""`Encoded` ↔ the compact form the length index stores, so the loader serves build-time tokens without tokenising.

Stored form of one sample (see `mixer.lengths`):

- `input_ids`: the ids with each image's run of `n_image_tokens` image ids collapsed to ONE image id — what the
  tokenizer gave piece by piece; a LAION-size index then holds a handful of ints per caption, not 576 more per image;
- `loss_spans`: flattened `(start, end)` pairs, in the *expanded* ids (the coordinates of `length` and `turn_ends`),
  of the maximal runs whose label is the id itself; every other label is IGNORE_INDEX;
- `turn_ends`: as `Encoded.turn_ends` (the length index stores them for the planner anyway).

Every image id in the collapsed ids starts an image run (`encode` expands each image id it meets), so expanding needs
nothing but the tokenizer's image id and `n_image_tokens`. `from_stored(*to_stored(enc), …)` equals `enc`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixer.templates.encode import IGNORE_INDEX, Encoded


def to_stored(enc: Encoded, n_image_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(collapsed input_ids int32, loss_spans int32 flattened pairs) of an encoded sample."""
    ids = np.asarray(enc.input_ids, dtype=np.int32)
    labels = np.asarray(enc.labels, dtype=np.int32)
    keep = np.ones(len(ids), dtype=bool)
    for s in enc.image_starts:
        assert (ids[s : s + n_image_tokens] == ids[s]).all(), f"image run at {s} is not {n_image_tokens} image ids"
        keep[s + 1 : s + n_image_tokens] = False
    labelled = labels != IGNORE_INDEX
    assert (labels[labelled] == ids[labelled]).all(), "a label is neither IGNORE_INDEX nor its input id"
    edges = np.flatnonzero(np.diff(np.concatenate([[0], labelled.view(np.int8), [0]])))
    return ids[keep], edges.astype(np.int32)


def from_stored(
    input_ids: np.ndarray, loss_spans: np.ndarray, turn_ends: Sequence[int], image_id: int, n_image_tokens: int
) -> Encoded:
    """The `Encoded` of a stored sample: ids and labels as int32 arrays, image starts and turn ends as lists.

    The arrays may be views of the caller's buffers; nothing here writes to them.
    """
    at = np.flatnonzero(input_ids == image_id)
    if len(at):
        counts = np.ones(len(input_ids), dtype=np.int64)
        counts[at] = n_image_tokens
        ids = np.repeat(input_ids, counts)
        starts = (at + np.arange(len(at)) * (n_image_tokens - 1)).tolist()
    else:
        ids, starts = np.asarray(input_ids), []
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    for s, e in np.asarray(loss_spans).reshape(-1, 2).tolist():
        labels[s:e] = ids[s:e]
    return Encoded(
        input_ids=ids, labels=labels, image_starts=starts, turn_ends=np.asarray(turn_ends, dtype=np.int64).tolist()
    )
