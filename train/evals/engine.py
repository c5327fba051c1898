"""Batched inference for evaluation: greedy generation with a KV cache, and the likelihood of given answers.

Generation runs over left-padded prompts; the log-likelihood of answers (yes/no, option letters) takes one forward
pass.

Left padding keeps every row's last prompt token in the last column, so one step of the cache serves all rows;
`position_ids` count only real tokens, so a padded row sees the same positions as it would alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from train.evals.model import EvalModel


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, L]` ids and attention mask (0 on the padding put in front of shorter rows)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position of each real token within its row (padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(model: EvalModel, prompts: list[list[int]], pixels: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt (one image per row), cut before the EOS token.

    A row that has emitted EOS is filled with padding while the others go on.
    """
    device = pixels.device
    ids, mask = (t.to(device) for t in left_pad(prompts, model.pad_id))
    out = model.forward(ids, pixels, mask, positions(mask), logits_to_keep=1)
    return decode(model, out.logits[:, -1], out.past_key_values, mask, max_new_tokens)


@torch.no_grad()
def decode(
    model: EvalModel, logits: torch.Tensor, cache: Any, mask: torch.Tensor, max_new_tokens: int
) -> list[list[int]]:
    """The greedy loop after a prefill: `[B, V]` next-token logits, the KV cache and the `[B, L]` left-padded mask."""
    pos = positions(mask)[:, -1:]
    done = torch.zeros(len(mask), dtype=torch.bool, device=mask.device)
    new: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = logits.argmax(-1).masked_fill(done, model.pad_id)
        new.append(token)
        if model.eos_id is not None:
            done |= token == model.eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = F.pad(mask, (0, 1), value=1)
        pos = pos + 1
        out = model.forward(token[:, None], None, mask, pos, past_key_values=cache)
        logits, cache = out.logits[:, -1], out.past_key_values
    rows = torch.stack(new, dim=1).tolist() if new else [[] for _ in range(len(mask))]
    return [_until_eos(r, model.eos_id) for r in rows]


def _until_eos(row: list[int], eos: int | None) -> list[int]:
    return row[: row.index(eos)] if eos is not None and eos in row else row


@torch.no_grad()
def answer_logprobs(model: EvalModel, prompts: list[list[int]], answers: list[list[int]], pixels: torch.Tensor):
    """`[B]` summed log-probability of each row's answer tokens after its prompt (row i uses image i)."""
    rows = [p + a for p, a in zip(prompts, answers, strict=True)]
    ids, mask = (t.to(pixels.device) for t in left_pad(rows, model.pad_id))
    logits = model.forward(ids, pixels, mask, positions(mask), use_cache=False).logits
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    width = ids.shape[1]
    # the answer is each row's last len(answer) tokens (left padding): their predictions sit one column earlier
    keep = torch.zeros_like(logp, dtype=torch.bool)
    for i, a in enumerate(answers):
        keep[i, width - 1 - len(a) :] = True
    return (logp * keep).sum(-1)
