"""Export folder → load_export gives identical logits and generations; each part loads with 🤗 from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from test_model_fixtures import model_config, pack, sample, train_tokenizer
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

from mixer.batch import IGNORE_INDEX, IMAGE_TOKEN
from train.model import apply_lora, build_vlm, load_export, save_export
from train.model.vlm import image_positions


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _batch(tok, n):
    torch.manual_seed(3)
    a = sample(tok, "describe the image.", "a cat on a red mat", n)
    b = sample(tok, "what colour is the bus?", "yellow")
    return pack([a, b], [torch.randn(3, 32, 32), None], tok, n, seq_len=len(a[0]) + len(b[0]) + 3)


def _prompt(tok, n):
    ids = [tok.convert_tokens_to_ids(IMAGE_TOKEN)] * n + tok("describe the image.")["input_ids"]
    return torch.tensor([ids])


def _with_trained_adapters(vlm):
    apply_lora(vlm, r=4, alpha=8, dropout=0.0)
    for name, p in vlm.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return vlm


@pytest.mark.parametrize(
    ("llm", "connector", "options", "lora"),
    [
        ("llama", "mlp2x_gelu", {}, None),
        ("phi", "qformer", {"qk_norm": True, "post_attn_norm": True}, "merge"),
        ("phi", "resampler", {"post_attn_norm": True}, "adapter"),
    ],
)
def test_export_round_trip(tok, tmp_path, llm, connector, options, lora):
    torch.manual_seed(0)
    vlm = build_vlm(model_config(llm, connector, **options), tok, 32).eval()
    if lora:
        _with_trained_adapters(vlm).eval()
    n = vlm.n_image_tokens(32)
    batch, image, prompt = _batch(tok, n), torch.randn(1, 3, 32, 32), _prompt(tok, n)
    with torch.no_grad():
        logits = vlm.logits(batch)
    generated = vlm.generate(image, prompt, max_new_tokens=6)
    assert generated.shape == (1, 6)

    out = save_export(vlm, tok, tmp_path / "export", image_size=32, lora=lora or "merge")
    loaded, loaded_tok = load_export(out)
    assert isinstance(loaded.llm, PeftModel) == (lora == "adapter")
    assert loaded_tok.convert_tokens_to_ids(IMAGE_TOKEN) == loaded.image_token_id == vlm.image_token_id
    assert loaded.n_image_tokens(32) == n
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(batch), logits, atol=1e-6, rtol=0)
    assert torch.equal(loaded.generate(image, prompt, max_new_tokens=6), generated)


def test_export_parts_load_with_from_pretrained(tok, tmp_path):
    torch.manual_seed(0)
    vlm = build_vlm(model_config("llama", "linear"), tok, 32).eval()
    out = save_export(vlm, tok, tmp_path / "export", image_size=64)
    llm = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(llm(ids).logits, vlm.llm(ids).logits, atol=1e-6, rtol=0)
    assert AutoTokenizer.from_pretrained(out)("a cat")["input_ids"] == tok("a cat")["input_ids"]
    tower = CLIPVisionModel.from_pretrained(out / "vision")
    assert torch.equal(tower.embeddings.patch_embedding.weight, vlm.vision.model.embeddings.patch_embedding.weight)
    processor = AutoImageProcessor.from_pretrained(out)
    pixels = processor(torch.zeros(3, 80, 100, dtype=torch.uint8), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    assert processor.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    meta = json.loads((out / "tinymix_vlm.json").read_text())
    assert meta["n_image_tokens"] == 16 and meta["connector"]["type"] == "linear"


def test_generate_matches_uncached_greedy_and_stops_at_eos(tok):
    torch.manual_seed(0)
    vlm = build_vlm(model_config("phi", "linear", post_attn_norm=True), tok, 32).eval()
    n = vlm.n_image_tokens(32)
    image, prompt = torch.randn(3, 32, 32), _prompt(tok, n)
    assert image_positions(prompt, vlm.image_token_id, n).tolist() == [[0, 0]]
    vlm.eos_token_id = None
    ids = vlm.generate(image[None], prompt, max_new_tokens=5)

    # Reference: re-run the whole packed sequence through vlm.logits for every new token (no KV cache).
    seq = prompt[0].tolist()
    with torch.no_grad():
        for _ in range(5):
            batch = pack([(seq, [IGNORE_INDEX] * len(seq))], [image], tok, n)
            seq.append(int(vlm.logits(batch)[0, -1].argmax()))
    assert ids[0].tolist() == seq[-5:]

    vlm.eos_token_id = ids[0, 1].item()
    stopped = vlm.generate(image[None], prompt, max_new_tokens=5)[0].tolist()
    first_eos = ids[0].tolist().index(vlm.eos_token_id)
    assert stopped == ids[0, : first_eos + 1].tolist() + [tok.pad_token_id] * (4 - first_eos)


def test_load_export_rejects_a_plain_folder(tmp_path):
    with pytest.raises(ValueError, match="not a tinymix export"):
        load_export(tmp_path)
