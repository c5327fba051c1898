"""pack_batch: exact tensors for a hand-made layout, and the PackedBatch invariants over random layouts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixer.batch import IGNORE_INDEX, block_diagonal_mask
from mixer.loader.pack import Segment, pack_batch

X = IGNORE_INDEX


NORM = ((0.5, 0.25, 0.125), (2.0, 4.0, 8.0))


def pixels(*values: int) -> torch.Tensor:
    """One 2x2 uint8 image per value, every byte that value."""
    return torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()


def test_exact_layout():
    a = Segment([10, 11, 12], [X, 11, 12])
    b = Segment([20, 7, 7, 21], [X, X, X, 21], image_starts=[1])
    c = Segment([30, 7, 7, 31, 32], [X, X, X, 31, 32], image_starts=[1])
    d = Segment([40, 41, 42, 43, 44, 45, 46, 47], [X] * 4 + [44, 45, 46, 47])
    batch = pack_batch([[a, b], [c], [], [d]], seq_len=8, pad_id=0, pixel_values=pixels(1, 2), mean_std=NORM)

    assert batch["input_ids"].tolist() == [
        [10, 11, 12, 20, 7, 7, 21, 0],
        [30, 7, 7, 31, 32, 0, 0, 0],
        [0] * 8,
        [40, 41, 42, 43, 44, 45, 46, 47],
    ]
    assert batch["labels"].tolist() == [
        [X, 11, 12, X, X, X, 21, X],
        [X, X, X, 31, 32, X, X, X],
        [X] * 8,
        [X, X, X, X, 44, 45, 46, 47],
    ]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 0, 1, 2, 3, 0],
        [0, 1, 2, 3, 4, 0, 1, 2],
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3, 4, 5, 6, 7],
    ]
    assert batch["segment_ids"].tolist() == [
        [1, 1, 1, 2, 2, 2, 2, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [0] * 8,
        [1] * 8,
    ]
    # row 0: 3, 4, pad 1 | row 1: 5, pad 3 | row 2: pad 8 | row 3: 8
    assert batch["cu_seqlens"].tolist() == [0, 3, 7, 8, 13, 16, 24, 32]
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["image_positions"].tolist() == [[0, 4], [1, 1]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1, 2] and batch["pixel_values"].dtype == torch.uint8
    assert batch["pixel_norm"].tolist() == [[0.5, 0.25, 0.125], [2.0, 4.0, 8.0]]
    for k in ("input_ids", "labels", "position_ids", "segment_ids", "image_positions"):
        assert batch[k].dtype == torch.int64


def test_no_images_gives_empty_image_tensors():
    batch = pack_batch(
        [[Segment([1, 2], [X, 2])]],
        seq_len=4,
        pad_id=9,
        pixel_values=torch.zeros(0, 3, 5, 5, dtype=torch.uint8),
        mean_std=NORM,
    )
    assert batch["pixel_values"].shape == (0, 3, 5, 5)
    assert batch["image_positions"].shape == (0, 2) and batch["image_positions"].dtype == torch.int64
    assert batch["input_ids"].tolist() == [[1, 2, 9, 9]]


def test_overlong_row_and_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="row 0: segments take 5 tokens, more than seq_len 4"):
        pack_batch([[Segment([1, 2, 3], [X] * 3), Segment([4, 5], [X] * 2)]], 4, 0, pixels(), NORM)
    with pytest.raises(ValueError, match="row 0 segment 1: 1 labels for 2 input ids"):
        pack_batch([[Segment([1, 2], [X])]], 4, 0, pixels(), NORM)
    with pytest.raises(ValueError, match=r"pixel_values \(1, 3, 2, 2\): expected \[2, 3, H, W\]"):
        pack_batch([[Segment([1, 2], [X, X], [0]), Segment([3], [X], [0])]], 4, 0, pixels(1), NORM)
    with pytest.raises(ValueError, match="pixel_values: expected uint8 RGB bytes, got torch.float32"):
        pack_batch([[Segment([1, 2], [X, X], [0])]], 4, 0, pixels(1).float(), NORM)


segment_lengths = st.lists(st.lists(st.integers(1, 6), max_size=4), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(segment_lengths)
def test_invariants(lengths):
    seq_len = 24
    rows, token, values = [], 100, []
    for r in lengths:
        row = []
        for n in r:
            ids = list(range(token, token + n))
            token += n
            starts = [0] if n >= 2 else []
            row.append(Segment(ids, ids, starts))
            values.extend([token % 256] * len(starts))
        rows.append(row)
    batch = pack_batch(rows, seq_len, pad_id=0, pixel_values=pixels(*values), mean_std=NORM)
    seg = batch["segment_ids"]

    # every real token is placed once, in order
    flat = batch["input_ids"][seg > 0].tolist()
    assert flat == [t for row in rows for s in row for t in s.input_ids]
    # cu_seqlens cover B*L and each interval is one segment of one row (padding its own)
    cu = batch["cu_seqlens"].tolist()
    assert cu[0] == 0 and cu[-1] == len(rows) * seq_len
    flat_seg = (seg + 1000 * torch.arange(len(rows))[:, None]).flatten()
    for lo, hi in zip(cu, cu[1:], strict=False):
        assert hi > lo and (flat_seg[lo:hi] == flat_seg[lo]).all()
        assert batch["position_ids"].flatten()[lo:hi].tolist() == list(range(hi - lo))
    # images point at their segment's first token, in order
    assert len(batch["image_positions"]) == len(values)
    for r, p in batch["image_positions"].tolist():
        assert seg[r, p] > 0 and batch["position_ids"][r, p] == 0
    # padding: pad ids, no labels
    assert (batch["input_ids"][seg == 0] == 0).all() and (batch["labels"][seg == 0] == X).all()
    # the block-diagonal mask lets no token see another segment
    mask = block_diagonal_mask(seg)[:, 0] == 0
    cross = (seg[:, :, None] != seg[:, None, :]) & mask
    assert not cross.any()
