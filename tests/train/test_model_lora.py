"""LoRA through peft: per-architecture default targets, and merging gives the same outputs as the adapted model."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from test_model_fixtures import model_config, pack, sample, train_tokenizer

from train.model import apply_lora, build_vlm, merge_lora
from train.model.lora import default_target_modules


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _batch(tok, n):
    torch.manual_seed(3)
    a = sample(tok, "describe the image.", "a cat on a red mat", n)
    b = sample(tok, "what colour is the bus?", "yellow")
    return pack([a, b], [torch.randn(3, 32, 32), None], tok, n, seq_len=len(a[0]) + len(b[0]) + 3)


def _perturb_adapters(llm: torch.nn.Module) -> int:
    # peft initialises lora_B to zero (a no-op adapter); give it weights so merging has something to fold in.
    n = 0
    for name, p in llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
            n += 1
    return n


@pytest.mark.parametrize(
    ("llm", "expected"),
    [
        ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        ("phi", {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}),
    ],
)
def test_merge_round_trip(tok, llm, expected):
    torch.manual_seed(0)
    vlm = build_vlm(model_config(llm, "mlp2x_gelu"), tok, 32).eval()
    n = vlm.n_image_tokens(32)
    batch = _batch(tok, n)
    with torch.no_grad():
        base_logits = vlm.logits(batch)
    apply_lora(vlm, r=4, alpha=8, dropout=0.1)
    assert isinstance(vlm.llm, PeftModel)
    adapted = {name.split(".")[-1] for name, _ in vlm.llm.named_modules() if hasattr(_, "lora_A")}
    assert adapted == expected
    assert _perturb_adapters(vlm.llm) == 2 * len(expected)  # two layers
    vlm.eval()
    with torch.no_grad():
        peft_logits = vlm.logits(batch)
        peft_loss = vlm(batch).loss
    assert (peft_logits - base_logits).abs().max() > 1e-3
    merge_lora(vlm)
    assert not isinstance(vlm.llm, PeftModel)
    assert not any("lora_" in name for name, _ in vlm.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(vlm.logits(batch), peft_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(vlm(batch).loss, peft_loss, atol=1e-5, rtol=0)


def test_lora_freezes_the_base_and_trains_adapters(tok):
    vlm = build_vlm(model_config("llama", "linear"), tok, 32)
    apply_lora(vlm, r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainable = {name for name, p in vlm.llm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="already carries LoRA"):
        apply_lora(vlm, r=2, alpha=4, dropout=0.0)


def test_default_targets_table():
    assert default_target_modules("gpt2") == ["c_attn", "c_proj", "c_fc"]
    assert default_target_modules("qwen2") == default_target_modules("llama")
    with pytest.raises(ValueError, match="no default for model_type 'mamba'"):
        default_target_modules("mamba")


def test_merge_without_lora_is_a_no_op(tok):
    vlm = build_vlm(model_config("llama", "linear"), tok, 32)
    llm = vlm.llm
    assert merge_lora(vlm).llm is llm
