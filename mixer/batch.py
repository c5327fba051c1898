"""The packed batch: the one data contract between the loader (`mixer`) and the trainer (`train`).

A micro batch holds `B` packed sequences of `L = seq_len` tokens. Each sequence is a run of *segments* (one sample
each, possibly truncated on a turn boundary) followed by padding. Images are expanded in `input_ids` to
`n_image_tokens` copies of the tokenizer's `<image>` token; the model replaces those embeddings with the connector's
output. No token may attend across segments: attention is block-diagonal by segment.

Images travel as bytes: the loader emits `pixel_values` as uint8 RGB with the tower's per-channel mean and std in
`pixel_norm`, a quarter of the float32 bytes to move from its workers and to the device. The consumer calls
`normalize_pixels` once the batch is where it will be used; the model takes only normalised (floating) pixels.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import torch

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"


class _Norm(TypedDict, total=False):
    pixel_norm: torch.Tensor  # only while pixel_values are bytes (see PackedBatch)


class PackedBatch(_Norm):
    """Tensors of one micro batch (all on CPU as the loader emits them).

    input_ids     LongTensor [B, L]  pad_token_id after the last segment.
    labels        LongTensor [B, L]  target ids on assistant tokens, IGNORE_INDEX elsewhere (prompts, images, pad).
                                     Not shifted: the model shifts, as 🤗 causal LMs do.
    position_ids  LongTensor [B, L]  0, 1, 2 … restarting at each segment; padding continues from 0 in its own segment.
    segment_ids   LongTensor [B, L]  1, 2, 3 … per segment within a row; 0 on padding (attends to nothing real).
    cu_seqlens    IntTensor  [S+1]   cumulative segment lengths over the flattened B*L tokens (flash-attn varlen
                                     convention; each row's padding is a segment of its own so the sum is B*L).
    pixel_values  ByteTensor [N, 3, H, W]   RGB bytes of the images, resized and cropped for the tower, in the order
                                     their spans appear (row-major). After `normalize_pixels`: float
                                     `(pixel / 255 - mean) / std`, the tower's input (a batch built by hand for the
                                     model may carry such floats from the start, without `pixel_norm`).
    pixel_norm    FloatTensor [2, 3]  the tower's per-channel mean (row 0) and std (row 1) for RGB; present while
                                     pixel_values are bytes, dropped by `normalize_pixels`.
    image_positions LongTensor [N, 2] (row, start) of each image's run of n_image_tokens `<image>` tokens.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    pixel_values: torch.Tensor
    image_positions: torch.Tensor


def pixel_norm(mean_std: Any) -> torch.Tensor:
    """A `((m, m, m), (s, s, s))` pair as the [2, 3] float32 `pixel_norm` tensor of a batch."""
    return torch.tensor(mean_std, dtype=torch.float32).reshape(2, 3)


def normalized(pixels: torch.Tensor, norm: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 `[..., 3, H, W]` → `(pixel / 255 - mean) / std` per channel, on the pixels' device, then cast to `dtype`.

    Computed in float32, one rounding per operation in the order `v * float32(1/255)`, `- mean`, `/ std`, so every
    device gives the same float32 values (the CPU path in numpy, others in torch: the same IEEE operations).
    """
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixel_values: expected uint8 RGB bytes, got {pixels.dtype}")
    if tuple(norm.shape) != (2, 3):
        raise ValueError(f"pixel_norm: expected [2, 3] (mean, std per channel), got {tuple(norm.shape)}")
    if pixels.device.type == "cpu":
        # numpy, one thread: torch would spread each pass over the intra-op threads, which on the trainer's cores,
        # shared with the loader's workers, wait at barriers; alone it is still twice numpy's time.
        return _normalized_numpy(pixels, norm).to(dtype)
    return _normalized_torch(pixels, norm).to(dtype)


def _normalized_numpy(pixels: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    mean, std = norm.to(torch.float32).numpy().reshape(2, 3, 1, 1)
    a = pixels.numpy().astype(np.float32)
    a *= np.float32(1 / 255)
    a -= mean
    a /= std
    return torch.from_numpy(a)


def _normalized_torch(pixels: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    norm = norm.to(pixels.device, torch.float32)
    x = pixels.to(torch.float32)
    x.mul_(torch.tensor(1 / 255, dtype=torch.float32))
    return x.sub_(norm[0].view(3, 1, 1)).div_(norm[1].view(3, 1, 1))


def normalize_pixels(batch: PackedBatch, device: Any = None, dtype: torch.dtype = torch.float32) -> PackedBatch:
    """The batch on `device` (None: where it is) with `pixel_values` normalised for the tower, as `dtype`.

    Called by the consumer after the loader: the uint8 bytes move to the device, and the normalisation runs there.
    A batch without `pixel_norm` is taken as normalised already; its floating pixels are moved and cast.
    """
    out = {k: v.to(device) if device is not None else v for k, v in batch.items() if k != "pixel_norm"}
    pixels = out["pixel_values"]
    if "pixel_norm" in batch:
        out["pixel_values"] = normalized(pixels, batch["pixel_norm"], dtype)
    elif pixels.is_floating_point():
        out["pixel_values"] = pixels.to(dtype)
    else:
        raise ValueError(f"pixel_values are {pixels.dtype} but the batch has no pixel_norm to normalise them with")
    return PackedBatch(**out)  # type: ignore[typeddict-item]


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
