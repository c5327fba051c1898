"""The packed engine `bench.eval.packing` measures against `train eval`'s padded one (`train.evals.engine.generate`).

Prefill: a batch's prompts laid end to end in one row `[1, T]` with no padding, position ids restarting at each
question, attention confined to each question — by the model's own attention with a 4D block-diagonal mask, or, when the
model's attention is a varlen one, by `cu_seq_lens_q/k` (flash-attention's contract; `VARLEN` = `varlen_reference` is
its CPU stand-in, which also takes a padded batch's 2D mask as flash_attention_2 does). Decode:
each question's slice of the packed KV cache is laid into a left-padded cache `[B, H, L_max, D]`, which is exactly
the state `generate` reaches after its padded prefill, and the same greedy loop continues from there.

tinymix-form models (a `TinyVLM` behind `EvalModel`) only: an hf export's forward is 🤗 Llava's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

from mixer.batch import block_diagonal_mask
from train.evals.engine import decode as engine_decode
from train.evals.engine import left_pad, positions
from train.evals.model import EvalModel
from train.model.vlm import image_positions, is_varlen, register_varlen_attention

VARLEN = "tinymix_eval_varlen_reference"


def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """flash_attention_2's contract on CPU: packed segments by `cu_seq_lens_q/k`, else a 2D key-padding mask.

    Prefill of a packed row: causal SDPA within each segment, never across (what `flash_attn_varlen_func` computes in
    one kernel). Otherwise (decode steps, a padded prefill) transformers hands over the 2D padding mask as it does to
    flash_attention_2 (`flash_attention_mask`), and the queries are aligned to the end of the keys.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        bounds = cu.tolist()
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=True
                )
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ],
            dim=2,
        )
    else:
        q_len, k_len = query.shape[2], key.shape[2]
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].bool()
        # a padding query sees no key: let it see all (finite garbage nobody reads) rather than produce NaN
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


register_varlen_attention(VARLEN, varlen_reference)
ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, flash_attention_mask)


@contextmanager
def attention(model: EvalModel, name: str | None) -> Iterator[None]:
    """The LLM's attention implementation switched to `name` (None: left alone) for the duration.

    The bench runs an engine pair under `VARLEN`, as both would run under flash_attention_2 on a GPU.
    """
    llm = model.vlm.llm
    before = llm.config._attn_implementation
    if name is not None and name != before:
        llm.set_attn_implementation(name)
    try:
        yield
    finally:
        if llm.config._attn_implementation != before:
            llm.set_attn_implementation(before)


@dataclass
class Prefilled:
    """The state after the prompts are read: the same whichever way they were read (padded or packed)."""

    logits: torch.Tensor
    """`[B, V]` next-token logits at each prompt's last token."""
    cache: Any
    """A left-padded KV cache `[B, H, L_max, D]` per layer."""
    mask: torch.Tensor
    """`[B, L_max]` attention mask (0 on the left padding)."""


def pack(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[1, T]` ids of the prompts end to end, `[1, T]` positions restarting per prompt, `[B + 1]` int32 cu_seqlens."""
    lengths = torch.tensor([len(p) for p in prompts])
    cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long)[None]
    pos = torch.cat([torch.arange(n) for n in lengths.tolist()])[None]
    return ids, pos, cu


def padded_cache(cache: Any, cu: torch.Tensor, config: Any) -> tuple[DynamicCache, torch.Tensor]:
    """Each segment's keys / values of a packed `[1, H, T, D]` cache right-aligned in `[B, H, L_max, D]`, and the mask.

    Left padding, as `left_pad` lays the prompts: the padding slots hold copies of token 0, masked out everywhere.
    """
    lengths = (cu[1:] - cu[:-1]).long()
    width = int(lengths.max())
    col = torch.arange(width)[None]
    real = col >= (width - lengths)[:, None]  # [B, L_max]
    index = torch.where(real, cu[:-1, None].long() + col - (width - lengths)[:, None], 0)  # packed column per slot
    layers = []
    for layer in cache.layers:
        k, v = layer.keys[0], layer.values[0]  # [H, T, D]
        layers.append((k[:, index].transpose(0, 1), v[:, index].transpose(0, 1)))  # [B, H, L_max, D]
    return DynamicCache(ddp_cache_data=layers, config=config), real.long()


@torch.no_grad()
def prefill_packed(model: EvalModel, prompts: list[list[int]], pixels: torch.Tensor) -> Prefilled:
    """Read the prompts as one packed row: `cu_seq_lens` under a varlen attention, else a block-diagonal 4D mask."""
    if model.hf:
        raise ValueError(f"{model.path}: the packed engine reads tinymix-form exports only")
    device = pixels.device
    ids, pos, cu = pack(prompts)
    ids, pos = ids.to(device), pos.to(device)
    vlm = model.vlm
    embeds = vlm.embed(ids, pixels.to(model.dtype), image_positions(ids, vlm.image_token_id, model.n_image_tokens))
    if is_varlen(vlm.llm.config._attn_implementation):
        longest = max(len(p) for p in prompts)
        kw = {"cu_seq_lens_q": cu.to(device), "cu_seq_lens_k": cu.to(device)}
        kw |= {"max_length_q": longest, "max_length_k": longest, "attention_mask": None}
    else:
        segments = torch.repeat_interleave(torch.arange(1, len(prompts) + 1), (cu[1:] - cu[:-1]).long())[None]
        kw = {"attention_mask": block_diagonal_mask(segments.to(device), dtype=embeds.dtype)}
    out = vlm.llm(inputs_embeds=embeds, position_ids=pos, use_cache=True, **kw)
    cache, mask = padded_cache(out.past_key_values, cu, vlm.llm.config)
    return Prefilled(out.logits[0, cu[1:].long() - 1], cache, mask.to(device))


@torch.no_grad()
def prefill_padded(model: EvalModel, prompts: list[list[int]], pixels: torch.Tensor) -> Prefilled:
    """Read the prompts left-padded, as `train.evals.engine.generate` does."""
    ids, mask = (t.to(pixels.device) for t in left_pad(prompts, model.pad_id))
    out = model.forward(ids, pixels, mask, positions(mask), logits_to_keep=1)
    return Prefilled(out.logits[:, -1], out.past_key_values, mask)


def decode(model: EvalModel, state: Prefilled, max_new_tokens: int) -> list[list[int]]:
    """`train eval`'s greedy loop (`train.evals.engine.decode`) from the state after a prefill."""
    return engine_decode(model, state.logits, state.cache, state.mask, max_new_tokens)


def generate_packed(
    model: EvalModel, prompts: list[list[int]], pixels: torch.Tensor, max_new_tokens: int
) -> list[list[int]]:
    """Greedy answers with a packed prefill: what `train.evals.engine.generate` answers, read without padding."""
    return decode(model, prefill_packed(model, prompts, pixels), max_new_tokens)


def padding_waste(prompts: list[list[int]]) -> tuple[int, int]:
    """(pad tokens, all tokens) of the batch left-padded to its longest prompt."""
    width = max(len(p) for p in prompts)
    return width * len(prompts) - sum(len(p) for p in prompts), width * len(prompts)
