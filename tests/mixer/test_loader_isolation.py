"""Attention isolation: a packed batch through a tiny 🤗 Llama gives each text-only sample's logits and loss alone.

The packed forward uses exactly what the loader emits: `block_diagonal_mask(segment_ids)` as a 4D additive mask and
the restarting `position_ids`. Tolerance: fp32 on the CPU, atol 1e-5 (masked keys get exactly zero weight, so only
the order of summation differs from the unpacked run).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from mixer.batch import IGNORE_INDEX, block_diagonal_mask
from mixer.loader.images import CLIP_MEAN_STD
from mixer.loader.pack import Segment, pack_batch
from mixer.templates import encode
from mixer.tokenizer import load_tokenizer

TOL = 1e-5
CONVERSATIONS = [
    [("What color is the car?", "The car is red."), ("And the bus?", "Blue.")],
    [("Describe the picture.", "A man with a dog is sitting on a table in the street.")],
    [("How many cats?", "Two.")],
    [("Where is the book?", "On the table."), ("What does the sign say?", "Text.")],
    [("Is there a woman?", "Yes, there is a woman standing with a small dog.")],
]


def conversation(pairs):
    return [turn for q, a in pairs for turn in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of one sample's [n, V] logits and [n] labels (shifted within the sample)."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_forward_equals_each_sample_alone(tiny_tokenizer, attn):
    tok = load_tokenizer(str(tiny_tokenizer))
    segments = []
    for pairs in CONVERSATIONS:
        enc = encode(conversation(pairs), tok, "phi", n_image_tokens=1)
        assert not enc.image_starts
        segments.append(Segment(enc.input_ids, enc.labels))
    lengths = [len(s) for s in segments]
    seq_len = lengths[0] + lengths[1] + lengths[2] + 3
    assert lengths[3] + lengths[4] <= seq_len
    no_images = torch.zeros(0, 3, 4, 4, dtype=torch.uint8)
    batch = pack_batch([segments[:3], segments[3:]], seq_len, tok.pad_token_id, no_images, CLIP_MEAN_STD)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"],
            attention_mask=block_diagonal_mask(batch["segment_ids"]),
            position_ids=batch["position_ids"],
        ).logits
        starts = [(0, 0), (0, lengths[0]), (0, lengths[0] + lengths[1]), (1, 0), (1, lengths[3])]
        for seg, (row, start) in zip(segments, starts, strict=True):
            ids = torch.tensor([list(seg.input_ids)])
            alone = model(input_ids=ids).logits[0]
            got = packed[row, start : start + len(seg)]
            torch.testing.assert_close(got, alone, atol=TOL, rtol=0)
            labels = torch.tensor(list(seg.labels))
            assert (batch["labels"][row, start : start + len(seg)] == labels).all()
            torch.testing.assert_close(sample_loss(got, labels), sample_loss(alone, labels), atol=TOL, rtol=0)

        # the check has teeth: without the block-diagonal mask a later segment sees the earlier ones
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        second = slice(lengths[0], lengths[0] + lengths[1])
        alone = model(input_ids=torch.tensor([list(segments[1].input_ids)])).logits[0]
        assert (leaky[0, second] - alone).abs().max() > 1e-3
