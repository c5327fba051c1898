"""The packed engine `bench.eval.packing` times (`bench.eval.packed`) against `train eval`'s padded one: after the
prefill it holds the padded engine's state (logits, KV cache at every real position), and it gives the padded
engine's greedy answers answer by answer, with the block-diagonal mask and with the varlen attention — so the bench
compares like with like."""

from __future__ import annotations

import pytest
import torch
from test_model_fixtures import eval_export
from transformers import AttentionInterface

from bench.eval.packed import (
    VARLEN,
    attention,
    generate_packed,
    pack,
    prefill_packed,
    prefill_padded,
    varlen_reference,
)
from train.evals import load_for_eval
from train.evals.engine import generate

SIZE = 32
QUESTIONS = [
    "what colour is the bus?",
    "how many people are standing on the left side of the green park at noon?",
    "read the sign.",
    "is there a cat?",
    "describe the small boat on the quiet lake and the sky above it in detail.",
]


@pytest.fixture(scope="module")
def model(tiny_tokenizer, tmp_path_factory):
    """A random tiny VLM exported in the tinymix form and loaded as `train eval` loads it."""
    return load_for_eval(eval_export(tiny_tokenizer, tmp_path_factory.mktemp("run") / "export", SIZE))


def _batch(model):
    prompts = [model.prompt_ids(q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) >= 3  # rows of several lengths: the padded batch pads
    pixels = torch.rand(len(prompts), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return prompts, pixels


def test_pack_lays_prompts_end_to_end_with_restarting_positions():
    ids, pos, cu = pack([[5, 6, 7], [8], [9, 10]])
    assert ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert pos.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert cu.tolist() == [0, 3, 4, 6] and cu.dtype == torch.int32


@pytest.mark.parametrize("varlen", [False, True], ids=["block_diagonal_mask", "varlen"])
def test_packed_prefill_reaches_the_padded_prefill_state(model, varlen):
    prompts, pixels = _batch(model)
    want = prefill_padded(model, prompts, pixels)  # the model's own attention (eager): train eval's state
    with attention(model, VARLEN if varlen else None):
        got = prefill_packed(model, prompts, pixels)
    assert torch.equal(got.mask, want.mask)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    real = want.mask.bool()
    for a, b in zip(got.cache.layers, want.cache.layers, strict=True):
        assert a.keys.shape == b.keys.shape
        torch.testing.assert_close(a.keys.transpose(1, 2)[real], b.keys.transpose(1, 2)[real], atol=1e-5, rtol=0)
        torch.testing.assert_close(a.values.transpose(1, 2)[real], b.values.transpose(1, 2)[real], atol=1e-5, rtol=0)
    assert model.vlm.llm.config._attn_implementation == "eager"  # switched back


@pytest.mark.parametrize("varlen", [False, True], ids=["block_diagonal_mask", "varlen"])
def test_packed_generation_gives_the_padded_answers(model, varlen):
    prompts, pixels = _batch(model)
    calls = []

    def counted(module, query, *args, **kwargs):
        cu = kwargs.get("cu_seq_lens_q")
        calls.append((query.shape[0], query.shape[2], None if cu is None else len(cu) - 1))
        return varlen_reference(module, query, *args, **kwargs)

    AttentionInterface.register(VARLEN, counted)
    try:
        with attention(model, VARLEN if varlen else None):
            packed = generate_packed(model, prompts, pixels, max_new_tokens=8)
            padded_here = generate(model, prompts, pixels, max_new_tokens=8)  # the bench's padded peer, same attention
    finally:
        AttentionInterface.register(VARLEN, varlen_reference)
    padded = generate(model, prompts, pixels, max_new_tokens=8)  # train eval's answers (eager)
    assert packed == padded and padded_here == padded
    assert sum(map(len, padded)) > len(prompts)  # the answers run past their first token: the decode is compared too
    layers = model.vlm.llm.config.num_hidden_layers
    total, longest, b = sum(map(len, prompts)), max(map(len, prompts)), len(prompts)
    if varlen:  # packed prefill: one row of every prompt's tokens in one segment per question; then 7 decode steps
        decode = [(b, 1, None)] * layers * 7
        assert calls == [(1, total, b)] * layers + decode + [(b, longest, None)] * layers + decode
    else:
        assert calls == []
