"""Varlen packing: under a flash-attention-like implementation the micro batch reaches the LLM as one flattened row
with `cu_seq_lens_q/k` and no mask. A reference varlen attention registered through transformers' AttentionInterface
honours only `cu_seq_lens` (it sees no mask and no position ids), so packed == each sample alone proves isolation
comes from the kwargs and not from a heuristic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_model_fixtures import model_config, pack, sample, stack_rows, train_tokenizer

from train.model import build_vlm
from train.model.vlm import VARLEN_ATTENTION, flatten, is_varlen, register_varlen_attention

TOL = 1e-5
NAME = "tinymix_varlen_reference"
CALLS: list[dict] = []


def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention within each `cu_seq_lens_q` segment of a `[1, H, T, D]` row, as flash_attn_varlen_func."""
    assert attention_mask is None and query.shape[0] == 1
    cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
    assert torch.equal(cu_q, cu_k) and int(cu_q[-1]) == query.shape[2]
    assert int((cu_q[1:] - cu_q[:-1]).max()) <= kwargs["max_length_q"]
    CALLS.append({"tokens": query.shape[2], "segments": len(cu_q) - 1})
    bounds = cu_q.tolist()
    parts = [
        F.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=True
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


register_varlen_attention(NAME, varlen_reference)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _samples(tok, n):
    torch.manual_seed(1)
    return [
        (sample(tok, "describe the image.", "a small boat on a quiet lake", n), torch.randn(3, 32, 32)),
        (sample(tok, "what colour is the bus?", "the bus is yellow"), None),
        (sample(tok, "how many people?", "three people", n), torch.randn(3, 32, 32)),
    ]


def test_flash_names_and_registered_ones_are_varlen():
    assert is_varlen("flash_attention_2") and is_varlen("flash_attention_3") and is_varlen(NAME)
    assert is_varlen("kernels-community/flash-attn3")
    assert not is_varlen("sdpa") and not is_varlen("eager") and NAME in VARLEN_ATTENTION


@pytest.mark.parametrize(
    ("llm", "options"),
    [("llama", {}), ("phi", {}), ("phi", {"qk_norm": True, "post_attn_norm": True}), ("qwen2", {}), ("gemma", {})],
)
def test_packed_rows_equal_each_sample_alone_under_varlen(tok, llm, options):
    torch.manual_seed(0)
    eager = build_vlm(model_config(llm, "mlp2x_gelu", attn_implementation="eager", **options), tok, 32).eval()
    varlen = build_vlm(model_config(llm, "mlp2x_gelu", attn_implementation="eager", **options), tok, 32).eval()
    varlen.load_state_dict(eager.state_dict())
    varlen.llm.set_attn_implementation(NAME)
    n = eager.n_image_tokens(32)
    samples = _samples(tok, n)
    lengths = [len(s[0]) for s, _ in samples]
    seq_len = lengths[0] + lengths[1]
    # Two rows: samples 1 and 2 fill row 0 exactly, sample 3 then padding in row 1. Row 0's last segment and row 1's
    # first are both segment 1: only cu_seqlens keeps them apart once the rows are laid end to end.
    batch = stack_rows(
        [
            pack([samples[0][0], samples[1][0]], [samples[0][1], None], tok, n, seq_len=seq_len),
            pack([samples[2][0]], [samples[2][1]], tok, n, seq_len=seq_len),
        ]
    )
    CALLS.clear()
    with torch.no_grad():
        logits = varlen.logits(batch)
        loss = varlen(batch).loss
    layers = varlen.llm.config.num_hidden_layers
    assert CALLS[:layers] == [{"tokens": 2 * seq_len, "segments": 4}] * layers  # one flattened row, 3 samples + pad
    assert logits.shape[:2] == (2, seq_len)
    where = [(0, 0), (0, lengths[0]), (1, 0)]
    with torch.no_grad():
        for (r, a), (s, image) in zip(where, samples, strict=True):
            alone = eager.logits(pack([s], [image], tok, n))[0]
            torch.testing.assert_close(logits[r, a : a + len(s[0])], alone, atol=TOL, rtol=0)
        torch.testing.assert_close(loss, eager(batch).loss, atol=TOL, rtol=0)


def test_without_cu_seqlens_the_reference_leaks(tok):
    """The comparison above can fail: one segment for the whole flattened row lets sample 2 see sample 1."""
    torch.manual_seed(0)
    vlm = build_vlm(model_config("llama", "linear", attn_implementation="eager"), tok, 32).eval()
    n = vlm.n_image_tokens(32)
    samples = _samples(tok, n)[:2]
    batch = pack([s for s, _ in samples], [im for _, im in samples], tok, n)
    with torch.no_grad():
        alone = vlm.logits(pack([samples[1][0]], [None], tok, n))[0]
        vlm.llm.set_attn_implementation(NAME)
        batch["cu_seqlens"] = torch.tensor([0, batch["input_ids"].numel()], dtype=torch.int32)
        leaked = vlm.logits(batch)[0, len(samples[0][0][0]) :][: len(alone)]
    assert (leaked - alone).abs().max() > 1e-3


def test_flatten_lays_rows_end_to_end(tok):
    a, b = sample(tok, "describe", "a cat", 2), sample(tok, "where", "on a mat")
    seq = max(len(a[0]), len(b[0]))
    image = torch.zeros(3, 32, 32)
    rows = stack_rows([pack([a], [image], tok, 2, seq_len=seq), pack([b], [None], tok, 2, seq_len=seq)])
    flat = flatten(rows)
    assert flat["input_ids"].shape == (1, 2 * seq)
    assert torch.equal(flat["input_ids"][0], rows["input_ids"].reshape(-1))
    assert flat["image_positions"].tolist() == [[0, 0]]
    segments = flat["segment_ids"][0]
    assert segments[: len(a[0])].unique().tolist() == [1]
    assert segments[seq : seq + len(b[0])].unique().tolist() == [1 + seq]  # row 1's segment 1 is a new segment


def test_flex_attention_with_the_segment_block_mask_equals_each_sample_alone(tok):
    torch.manual_seed(0)
    eager = build_vlm(model_config("llama", "mlp2x_gelu", attn_implementation="eager"), tok, 32).eval()
    flex = build_vlm(model_config("llama", "mlp2x_gelu", attn_implementation="eager"), tok, 32).eval()
    flex.load_state_dict(eager.state_dict())
    flex.llm.set_attn_implementation("flex_attention")
    n = eager.n_image_tokens(32)
    samples = _samples(tok, n)
    lengths = [len(s[0]) for s, _ in samples]
    batch = pack([s for s, _ in samples], [im for _, im in samples], tok, n, seq_len=sum(lengths) + 5)
    with torch.no_grad():
        logits = flex.logits(batch)
        for start, (s, image) in zip([0, lengths[0], lengths[0] + lengths[1]], samples, strict=True):
            alone = eager.logits(pack([s], [image], tok, n))[0]
            torch.testing.assert_close(logits[0, start : start + len(s[0])], alone, atol=TOL, rtol=0)
