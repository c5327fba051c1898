"""Encoded samples → one `PackedBatch`: segments laid end to end in each row, padding, restarting positions.

Pure (no disk, no tokenizer): the loader calls `pack_batch` with the segments of a micro batch's sequences, and a
test can build any layout by hand. The tensors follow the contract in `mixer.batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mixer.batch import IGNORE_INDEX, PackedBatch, pixel_norm


@dataclass(frozen=True)
class Segment:
    """One sample ready to pack: its ids and labels, and where each of its images' token runs starts."""

    input_ids: Sequence[int]
    labels: Sequence[int]
    image_starts: Sequence[int] = ()

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_batch(
    rows: Sequence[Sequence[Segment]], seq_len: int, pad_id: int, pixel_values: torch.Tensor, mean_std: Sequence
) -> PackedBatch:
    """Pack each row's segments into a `[len(rows), seq_len]` batch (see `mixer.batch.PackedBatch`).

    A row's segments are numbered 1, 2, … in order; padding after them is segment 0 with positions 0, 1, 2, … and
    is a segment of its own in `cu_seqlens`. An empty row is all padding. `pixel_values`, uint8 [N, 3, H, W], holds
    the images of all image starts, in row-major span order (N = 0 for a batch without images); `mean_std` is the
    tower's `((m, m, m), (s, s, s))`, carried as `pixel_norm` for `mixer.batch.normalize_pixels`.
    """
    b = len(rows)
    input_ids = np.full((b, seq_len), pad_id, dtype=np.int64)
    labels = np.full((b, seq_len), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((b, seq_len), dtype=np.int64)
    segment_ids = np.zeros((b, seq_len), dtype=np.int64)
    lengths: list[int] = []
    positions: list[tuple[int, int]] = []
    for r, segments in enumerate(rows):
        pos = 0
        for k, seg in enumerate(segments, start=1):
            n = len(seg)
            if pos + n > seq_len:
                raise ValueError(f"row {r}: segments take {pos + n} tokens, more than seq_len {seq_len}")
            if len(seg.labels) != n:
                raise ValueError(f"row {r} segment {k}: {len(seg.labels)} labels for {n} input ids")
            input_ids[r, pos : pos + n] = seg.input_ids
            labels[r, pos : pos + n] = seg.labels
            position_ids[r, pos : pos + n] = np.arange(n)
            segment_ids[r, pos : pos + n] = k
            positions.extend((r, pos + s) for s in seg.image_starts)
            lengths.append(n)
            pos += n
        if pos < seq_len:
            position_ids[r, pos:] = np.arange(seq_len - pos)
            lengths.append(seq_len - pos)
    if pixel_values.ndim != 4 or pixel_values.shape[0] != len(positions) or pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values {tuple(pixel_values.shape)}: expected [{len(positions)}, 3, H, W]")
    if pixel_values.dtype != torch.uint8:
        raise ValueError(f"pixel_values: expected uint8 RGB bytes, got {pixel_values.dtype}")
    cu = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    return PackedBatch(
        input_ids=torch.from_numpy(input_ids),
        labels=torch.from_numpy(labels),
        position_ids=torch.from_numpy(position_ids),
        segment_ids=torch.from_numpy(segment_ids),
        cu_seqlens=torch.from_numpy(cu),
        pixel_values=pixel_values,
        pixel_norm=pixel_norm(mean_std),
        image_positions=torch.tensor(positions, dtype=torch.int64).reshape(-1, 2),
    )


def pack_budget(
    segments: Sequence[Segment],
    seq_len: int,
    micro_batch: int,
    pad_id: int,
    pixel_values: torch.Tensor,
    mean_std: Sequence,
) -> PackedBatch:
    """A token-budget micro batch (`packing: budget`) as one row `[1, micro_batch × seq_len]`.

    The planner packed the micro batch's whole budget, no sample over `seq_len`; `cu_seqlens` bounds each sample (and
    the trailing padding), which a varlen attention takes as `cu_seq_lens_q/k`: the samples never see each other.
    """
    for k, seg in enumerate(segments, start=1):
        if len(seg) > seq_len:
            raise ValueError(f"segment {k}: {len(seg)} tokens, more than seq_len {seq_len}")
    return pack_batch([segments], micro_batch * seq_len, pad_id, pixel_values, mean_std)
