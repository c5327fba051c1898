"""The VLM module: image features spliced into the LLM's token embeddings, packed attention, and the loss.

Packed sequences (`mixer.batch.PackedBatch`) hold several samples per row. No token may attend across samples, so
eager / SDPA attention gets the 4D block-diagonal additive mask (transformers passes a 4D mask through untouched,
`masking_utils._preprocess_mask_arguments`); flash-attention instead gets no mask and restarting `position_ids`,
from which transformers derives varlen `cu_seqlens` itself.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn
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

    def _attention_kwargs(self, batch: PackedBatch, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
        position_ids = batch["position_ids"].to(batch["input_ids"].device)
        if "flash" in str(self.llm.config._attn_implementation):
            return {"attention_mask": None, "position_ids": position_ids}
        mask = block_diagonal_mask(batch["segment_ids"].to(position_ids.device), dtype=dtype)
        return {"attention_mask": mask, "position_ids": position_ids}

    def logits(self, batch: PackedBatch) -> torch.Tensor:
        """`[B, L, V]` next-token logits of a packed batch."""
        embeds = self.embed(batch["input_ids"], batch["pixel_values"], batch["image_positions"])
        out = self.llm(inputs_embeds=embeds, use_cache=False, **self._attention_kwargs(batch, embeds.dtype))
        return out.logits

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

    def forward(self, batch: PackedBatch) -> CausalLMOutput:
        """Mean loss over all label tokens of the micro batch, and the logits."""
        logits = self.logits(batch)
        losses = self.token_losses(logits, batch)
        labels, seg = batch["labels"].to(logits.device), batch["segment_ids"].to(logits.device)
        counted = F.pad((labels[:, 1:] != IGNORE_INDEX) & (seg[:, 1:] == seg[:, :-1]), (1, 0))
        loss = losses.sum() / counted.sum().clamp(min=1)
        return CausalLMOutput(loss=loss, logits=logits)

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
