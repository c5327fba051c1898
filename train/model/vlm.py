"""The VLM module: image features spliced into the LLM's token embeddings, packed attention, and the loss.

Packed sequences (`mixer.batch.PackedBatch`) hold several samples per row. No token may attend across samples, so
eager / SDPA attention gets the 4D block-diagonal additive mask (transformers passes a 4D mask through untouched,
`masking_utils._preprocess_mask_arguments`). A varlen attention (flash-attention 2/3, or one registered with
`register_varlen_attention`) instead gets the micro batch as one flattened row `[1, B*L]` with the loader's
`cu_seqlens` as transformers' `cu_seq_lens_q/k` (`FlashAttentionKwargs`) and no mask: isolation never rests on
transformers guessing packing from `position_ids`, which it only does for a batch of one row.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_outputs import CausalLMOutput

from mixer.batch import IGNORE_INDEX, PackedBatch, block_diagonal_mask
from train.model.connectors import Connector
from train.model.vision import VisionTower


def resolve_attn_implementation(requested: str, cuda: bool, flash_installed: bool) -> str:
    """The manifest's `attn_implementation`; `auto`: flash-attention on a GPU where installed, else SDPA; CPU: eager."""
    if requested != "auto":
        return requested
    if not cuda:
        return "eager"
    return "flash_attention_2" if flash_installed else "sdpa"


def attn_implementation_here(requested: str = "auto") -> str:
    """`resolve_attn_implementation` for this machine (CUDA present? flash-attn importable?)."""
    flash = importlib.util.find_spec("flash_attn") is not None
    return resolve_attn_implementation(requested, torch.cuda.is_available(), flash)


# Attention implementations that take flattened rows with cu_seq_lens (transformers' names).
VARLEN_ATTENTION = {"flash_attention_2", "flash_attention_3"}


def register_varlen_attention(name: str, fn: Callable) -> None:
    """Register `fn` with transformers' `AttentionInterface` as `name`, fed flattened rows and `cu_seq_lens_q/k`.

    transformers builds no mask for a name its mask interface does not know, so `fn` sees `attention_mask=None`.
    """
    AttentionInterface.register(name, fn)
    VARLEN_ATTENTION.add(name)


def is_varlen(attn_implementation: str | None) -> bool:
    """Whether the LLM's attention takes packed samples as one row with `cu_seq_lens` (flash-attention's varlen)."""
    name = str(attn_implementation)
    return name in VARLEN_ATTENTION or "flash-attn" in name  # hub kernels: kernels-community/flash-attn3, …


def flatten(batch: PackedBatch) -> PackedBatch:
    """The micro batch as one row `[1, B*L]`: rows end to end, image positions shifted, segment ids made unique.

    `cu_seqlens` already counts over the flattened tokens (each row's padding is a segment of its own).
    """
    b, n = batch["input_ids"].shape
    seg = batch["segment_ids"]
    rows = torch.arange(b, device=seg.device)[:, None]
    unique = torch.where(seg > 0, seg + rows * n, 0)  # row r's segment k ≠ row r+1's segment k once end to end
    pos = batch["image_positions"]
    starts = pos[:, 0] * n + pos[:, 1]
    flat = {k: batch[k].reshape(1, -1) for k in ("input_ids", "labels", "position_ids")}
    return PackedBatch(
        **flat,
        segment_ids=unique.reshape(1, -1),
        cu_seqlens=batch["cu_seqlens"],
        pixel_values=batch["pixel_values"],
        image_positions=torch.stack([torch.zeros_like(starts), starts], dim=1),
    )


def label_mask(batch: PackedBatch) -> torch.Tensor:
    """`[B, L]` True where a token is a label with a prediction in its own segment (what carries loss)."""
    labels, seg = batch["labels"], batch["segment_ids"]
    return F.pad((labels[:, 1:] != IGNORE_INDEX) & (seg[:, 1:] == seg[:, :-1]), (1, 0))


def label_tokens(batch: PackedBatch) -> int:
    """How many tokens of a micro batch carry loss (the weight of its loss sum in a token-exact mean)."""
    return int(label_mask(batch).sum())


def segment_block_mask(segment_ids: torch.Tensor) -> object:
    """flex-attention's `BlockMask` of a packed batch: causal within a segment (padding attends within itself).

    Built from the segment ids, not guessed from `position_ids`; blocks no query attends to are skipped.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    b, n = segment_ids.shape

    def same_segment_causal(bi: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (segment_ids[bi, q] == segment_ids[bi, kv]) & (q >= kv)

    return create_block_mask(same_segment_causal, b, None, n, n, device=segment_ids.device)


def image_positions(input_ids: torch.Tensor, image_token_id: int, n_image_tokens: int) -> torch.Tensor:
    """`[N, 2]` (row, start) of each run of `n_image_tokens` image tokens, row-major, as `PackedBatch` carries them."""
    rows, cols = (input_ids == image_token_id).nonzero(as_tuple=True)
    if rows.numel() % n_image_tokens:
        raise ValueError(f"input_ids hold {rows.numel()} image tokens, not a multiple of {n_image_tokens} per image")
    rows, cols = rows.view(-1, n_image_tokens), cols.view(-1, n_image_tokens)
    offsets = torch.arange(n_image_tokens, device=input_ids.device)
    if not ((rows == rows[:, :1]).all() and (cols == cols[:, :1] + offsets).all()):
        raise ValueError(f"input_ids: image tokens do not form contiguous runs of {n_image_tokens}")
    return torch.stack([rows[:, 0], cols[:, 0]], dim=1)


class TinyVLM(nn.Module):
    """Vision tower → connector → causal LM (`llm`: a 🤗 AutoModelForCausalLM, possibly peft-wrapped)."""

    def __init__(
        self,
        vision: VisionTower,
        connector: Connector,
        llm: nn.Module,
        image_token_id: int,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.connector = connector
        self.llm = llm
        self.image_token_id = image_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id

    def n_image_tokens(self, image_size: int) -> int:
        """Tokens one image occupies in the LLM's sequence at `image_size` pixels."""
        return self.connector.n_tokens(self.vision.n_features(image_size))

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, T, D]` connector outputs for `N` images."""
        return self.connector(self.vision(pixel_values))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings with each image's run of `<image>` tokens replaced by its connector outputs, in order."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        n_images = positions.shape[0]
        if pixel_values.shape[0] != n_images:
            raise ValueError(f"batch: {pixel_values.shape[0]} pixel_values but {n_images} image_positions")
        if not pixel_values.is_floating_point():  # the loader's uint8 bytes would reach the tower as 0..255
            raise ValueError(
                f"batch: pixel_values are {pixel_values.dtype}; normalise them: mixer.batch.normalize_pixels"
            )
        n_marked = int((input_ids == self.image_token_id).sum())
        if n_images == 0:
            if n_marked:
                raise ValueError(f"batch: {n_marked} <image> tokens in input_ids but no images")
            return embeds
        feats = self.image_embeddings(pixel_values).to(embeds.dtype)
        t = feats.shape[1]
        positions = positions.to(input_ids.device)
        rows = positions[:, :1].expand(-1, t).reshape(-1)
        cols = (positions[:, 1:] + torch.arange(t, device=input_ids.device)).reshape(-1)
        if n_marked != n_images * t or not bool((input_ids[rows, cols] == self.image_token_id).all()):
            raise ValueError(
                f"batch: image_positions do not match the <image> tokens in input_ids "
                f"({n_images} images x {t} tokens, {n_marked} marked)"
            )
        return embeds.index_put((rows, cols), feats.reshape(-1, feats.shape[-1]))

    def _attention_kwargs(
        self, batch: PackedBatch, dtype: torch.dtype, longest: int | None = None
    ) -> dict[str, torch.Tensor | int | None]:
        """Block-diagonal mask, or (varlen, `batch` flattened) `cu_seq_lens_q/k` and `longest` as max lengths.

        An upper bound of the longest segment is valid for flash-attention (it sizes the kernel grid): the row length
        before flattening, known on the host, where the exact maximum would cost a device sync per micro batch.
        """
        position_ids = batch["position_ids"].to(batch["input_ids"].device)
        if longest is not None:
            cu = batch["cu_seqlens"].to(position_ids.device, torch.int32)
            return {
                "attention_mask": None,
                "position_ids": position_ids,
                "cu_seq_lens_q": cu,
                "cu_seq_lens_k": cu,
                "max_length_q": longest,
                "max_length_k": longest,
            }
        segments = batch["segment_ids"].to(position_ids.device)
        if self.llm.config._attn_implementation == "flex_attention":
            return {"attention_mask": segment_block_mask(segments), "position_ids": position_ids}
        return {"attention_mask": block_diagonal_mask(segments, dtype=dtype), "position_ids": position_ids}

    def logits(self, batch: PackedBatch) -> torch.Tensor:
        """`[B, L, V]` next-token logits of a packed batch."""
        b, n = batch["input_ids"].shape
        varlen = is_varlen(self.llm.config._attn_implementation)
        if varlen:
            batch = flatten(batch)
        embeds = self.embed(batch["input_ids"], batch["pixel_values"], batch["image_positions"])
        kwargs = self._attention_kwargs(batch, embeds.dtype, longest=n if varlen else None)
        out = self.llm(inputs_embeds=embeds, use_cache=False, **kwargs)
        return out.logits.view(b, n, -1)

    @staticmethod
    def token_losses(logits: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """`[B, L]` cross-entropy of each label token, aligned with `labels` (0 where there is no target).

        A segment's first token has no prediction within its own sample, so it never carries loss, even when the
        previous segment's last token would "predict" it in the packed row.
        """
        labels, seg = batch["labels"].to(logits.device), batch["segment_ids"].to(logits.device)
        targets = labels[:, 1:].masked_fill(seg[:, 1:] != seg[:, :-1], IGNORE_INDEX)
        ce = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        return F.pad(ce, (1, 0))

    def per_token_loss(self, batch: PackedBatch) -> torch.Tensor:
        """`[B, L]` loss of each label token (0 elsewhere), for per-sample and per-source evaluation."""
        return self.token_losses(self.logits(batch), batch)

    def forward(self, batch: PackedBatch, num_items_in_batch: torch.Tensor | float | None = None) -> CausalLMOutput:
        """The loss summed over the micro batch's label tokens / `num_items_in_batch`, and the logits.

        Without `num_items_in_batch` the divisor is the micro batch's own label count (its mean token loss). The
        trainer passes the optimizer step's label count instead (🤗 Trainer's convention), so that every token of
        the step weighs the same whatever micro batch it fell in.
        """
        logits = self.logits(batch)
        losses = self.token_losses(logits, batch)
        if num_items_in_batch is None:
            num_items_in_batch = label_mask(batch).sum().clamp(min=1).to(logits.device)
        return CausalLMOutput(loss=losses.sum() / num_items_in_batch, logits=logits)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding with the images spliced in; returns the `[B, max_new_tokens]` new ids.

        Rows must be the same length with no padding (one prompt per call is the usual case). After a row emits
        the EOS token it is filled with the pad token (or EOS when there is none).
        """
        n = self.n_image_tokens(pixel_values.shape[-1]) if pixel_values.shape[0] else 1
        positions = image_positions(input_ids, self.image_token_id, n)
        embeds = self.embed(input_ids, pixel_values, positions)
        out = self.llm(inputs_embeds=embeds, use_cache=True)
        fill = self.pad_token_id if self.pad_token_id is not None else self.eos_token_id
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1)
            if fill is not None:
                token = token.masked_fill(done, fill)
            new.append(token)
            if self.eos_token_id is not None:
                done |= token == self.eos_token_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            out = self.llm(input_ids=token[:, None], past_key_values=out.past_key_values, use_cache=True)
        ids = torch.stack(new, dim=1) if new else input_ids.new_zeros(input_ids.shape[0], 0)
        if ids.shape[1] < max_new_tokens and fill is not None:
            ids = F.pad(ids, (0, max_new_tokens - ids.shape[1]), value=fill)
        return ids
