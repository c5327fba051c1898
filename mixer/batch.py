"""The packed batch: the one data contract between the loader (`mixer`) and the trainer (`train`).

A micro batch holds `B` packed sequences of `L = seq_len` tokens. Each sequence is a run of *segments* (one sample
each, possibly truncated on a turn boundary) followed by padding. Images are expanded in `input_ids` to
`n_image_tokens` copies of the tokenizer's `<image>` token; the model replaces those embeddings with the connector's
output. No token may attend across segments: attention is block-diagonal by segment.
"""

from __future__ import annotations

from typing import TypedDict

import torch

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"


class PackedBatch(TypedDict):
    """Tensors of one micro batch (all on CPU as the loader emits them).

    input_ids     LongTensor [B, L]  pad_token_id after the last segment.
    labels        LongTensor [B, L]  target ids on assistant tokens, IGNORE_INDEX elsewhere (prompts, images, pad).
                                     Not shifted: the model shifts, as 🤗 causal LMs do.
    position_ids  LongTensor [B, L]  0, 1, 2 … restarting at each segment; padding continues from 0 in its own segment.
    segment_ids   LongTensor [B, L]  1, 2, 3 … per segment within a row; 0 on padding (attends to nothing real).
    cu_seqlens    IntTensor  [S+1]   cumulative segment lengths over the flattened B*L tokens (flash-attn varlen
                                     convention; each row's padding is a segment of its own so the sum is B*L).
    pixel_values  FloatTensor [N, 3, H, W]  preprocessed images in the order their spans appear (row-major).
    image_positions LongTensor [N, 2] (row, start) of each image's run of n_image_tokens `<image>` tokens.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    pixel_values: torch.Tensor
    image_positions: torch.Tensor


def block_diagonal_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A [B, 1, L, L] additive attention mask: causal within a segment, -inf across segments and on padding rows.

    Padding tokens (segment 0) attend to themselves only, so no row is fully masked (which would give NaN in softmax).
    """
    b, n = segment_ids.shape
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(n, n, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = same & causal
    eye = torch.eye(n, dtype=torch.bool, device=segment_ids.device)
    allowed = allowed | eye
    mask = torch.zeros(b, 1, n, n, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)
