"""TinyGPT-V options on a Phi LLM: QK LayerNorm, post-attention RMSNorm, norms in fp32 and trainable."""

from __future__ import annotations

import pytest
import torch
from test_model_fixtures import model_config, pack, sample, train_tokenizer

from train.model import build_vlm
from train.model.tinygpt import FP32LayerNorm, FP32RMSNorm, attention_modules, norm_parameters


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _batch(tok, n):
    torch.manual_seed(3)
    s = sample(tok, "describe the image.", "a cat on a red mat", n)
    return pack([s], [torch.randn(3, 32, 32)], tok, n)


def test_options_are_present_and_norms_fp32_in_a_bf16_model(tok):
    torch.manual_seed(0)
    cfg = model_config("phi", "mlp2x_gelu", qk_norm=True, post_attn_norm=True)
    vlm = build_vlm(cfg, tok, 32, dtype=torch.bfloat16).eval()
    assert vlm.llm.config.qk_layernorm is True
    attns = attention_modules(vlm.llm)
    assert len(attns) == 2
    for attn in attns:
        assert isinstance(attn.q_layernorm, FP32LayerNorm) and isinstance(attn.k_layernorm, FP32LayerNorm)
        assert isinstance(attn.post_attn_norm, FP32RMSNorm)
    names = {name for name, _ in norm_parameters(vlm.llm)}
    assert "model.layers.0.self_attn.post_attn_norm.weight" in names
    assert "model.layers.1.self_attn.q_layernorm.weight" in names
    assert "model.layers.0.input_layernorm.bias" in names and "model.final_layernorm.weight" in names
    norms = dict(norm_parameters(vlm.llm))
    assert all(p.dtype == torch.float32 and p.requires_grad for p in norms.values())
    others = [p for name, p in vlm.llm.named_parameters() if name not in norms]
    assert others and all(p.dtype == torch.bfloat16 for p in others)
    out = vlm(_batch(tok, vlm.n_image_tokens(32)))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_post_attn_norm_normalises_the_attention_output(tok):
    torch.manual_seed(0)
    vlm = build_vlm(model_config("phi", "linear", post_attn_norm=True), tok, 32).eval()
    attn = attention_modules(vlm.llm)[0]
    raw: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    attn.dense.register_forward_hook(lambda m, a, out: raw.append(out))  # the attention output before the norm
    attn.register_forward_hook(lambda m, a, out: seen.append(out[0]))
    batch = _batch(tok, vlm.n_image_tokens(32))
    with torch.no_grad():
        torch.nn.init.normal_(attn.post_attn_norm.weight)
        vlm(batch)
    x, eps = raw[-1], attn.post_attn_norm.eps
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * attn.post_attn_norm.weight
    torch.testing.assert_close(seen[-1], expected, atol=1e-6, rtol=1e-5)
    assert (seen[-1] - x).abs().max() > 1e-2


def test_norms_receive_gradients(tok):
    torch.manual_seed(0)
    vlm = build_vlm(model_config("phi", "linear", qk_norm=True, post_attn_norm=True), tok, 32)
    vlm(_batch(tok, vlm.n_image_tokens(32))).loss.backward()
    for name, p in norm_parameters(vlm.llm):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fp32_layer_norm_matches_layer_norm():
    torch.manual_seed(0)
    ref = torch.nn.LayerNorm(16)
    torch.nn.init.normal_(ref.weight)
    ours = FP32LayerNorm(16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16)
    torch.testing.assert_close(ours(x), ref(x), atol=0, rtol=0)
    assert ours.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


def test_qk_norm_needs_a_phi_style_model(tok):
    with pytest.raises(ValueError, match="model.llm.qk_norm: model_type 'llama' has no qk_layernorm option"):
        build_vlm(model_config("llama", "linear", qk_norm=True), tok, 32)


def test_options_off_leave_the_model_stock(tok):
    vlm = build_vlm(model_config("phi", "linear"), tok, 32)
    assert vlm.llm.config.qk_layernorm is False
    assert not any(hasattr(a, "post_attn_norm") for a in attention_modules(vlm.llm))
    assert not any(isinstance(m, FP32LayerNorm) for m in vlm.llm.modules())
