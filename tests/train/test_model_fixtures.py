"""Shared helpers for the model tests (a tiny trained tokenizer, tiny model configs, packed batches), and their tests.

Other test_model_* files import from here; pytest's default (prepend) import mode puts this folder on sys.path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mixer.batch import IGNORE_INDEX, IMAGE_TOKEN, PackedBatch
from mixer.manifest.model import ModelConfig
from mixer.tokenizer import load_tokenizer
from mixer.tokenizer import train_tokenizer as mixer_train_tokenizer
from train.model import build_vlm, save_export
from train.model.export import EXPORT_JSON
from train.model.vlm import image_positions

PATCH = 16
VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": PATCH,
}
SIGLIP = {**VISION, "model_type": "siglip_vision_model"}
LLMS: dict[str, dict[str, Any]] = {
    "llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    },
    "phi": {
        "model_type": "phi",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 256,
    },
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    },
    "gemma": {  # ties its embeddings, as Gemma checkpoints do
        "model_type": "gemma",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 256,
    },
    "stablelm": {
        "model_type": "stablelm",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
    },
}
LLMS["qwen2_tied"] = {**LLMS["qwen2"], "tie_word_embeddings": True}  # Qwen2-0.5B, SmolLM2-like
CORPUS = [
    "a photo of a cat sitting on a red mat",
    "two dogs run across the green park at noon",
    "what colour is the bus? the bus is yellow",
    "USER: describe the image. ASSISTANT: a small boat on a quiet lake",
    "how many people are in the picture? three people",
] * 20


def train_tokenizer(out_dir: Path, vocab_size: int = 300) -> PreTrainedTokenizerBase:
    """The project's tiny byte-level BPE (`<image>`, `<pad>`, `</s>` special), reloaded from disk as a user would."""
    mixer_train_tokenizer(CORPUS, out_dir, vocab_size)
    return load_tokenizer(str(out_dir))


def model_config(llm: str = "llama", connector: str = "mlp2x_gelu", vision: dict | None = None, **extra) -> ModelConfig:
    llm_extra = {k: extra.pop(k) for k in ("qk_norm", "post_attn_norm", "attn_implementation") if k in extra}
    return ModelConfig.model_validate(
        {
            "vision": {"config": vision or VISION, **extra.pop("vision_options", {})},
            "connector": {"type": connector, "num_queries": 5, "num_layers": 1},
            "llm": {"config": LLMS[llm], **llm_extra},
            "tokenizer": "unused-the-test-passes-its-own",
            **extra,
        }
    )


def eval_export(tokenizer_dir: Path, out: Path, size: int = 32) -> Path:
    """A random tiny VLM (llama + mlp2x_gelu, seed 0) exported as `train launch` exports it, `llava_v1` template."""
    tok = load_tokenizer(str(tokenizer_dir))
    cfg = model_config("llama", "mlp2x_gelu")
    cfg.llm.config = {**LLMS["llama"], "max_position_embeddings": 512}
    torch.manual_seed(0)
    out = save_export(build_vlm(cfg, tok, size).eval(), tok, out, image_size=size)
    meta = json.loads((out / EXPORT_JSON).read_text())
    meta.update(template="llava_v1", mean_std=[[0.5] * 3, [0.5] * 3])
    (out / EXPORT_JSON).write_text(json.dumps(meta))
    return out


def sample(tokenizer, prompt: str, answer: str, n_image_tokens: int = 0) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one sample: [image tokens] prompt answer </s>, loss on the answer and </s> only."""
    image = [tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)] * n_image_tokens
    prompt_ids = image + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def pack(
    samples: list[tuple[list[int], list[int]]],
    images: list[torch.Tensor | None],
    tokenizer,
    n_image_tokens: int,
    seq_len: int | None = None,
) -> PackedBatch:
    """One packed row holding `samples` in order, padded to `seq_len`, following the `PackedBatch` contract."""
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    seg: list[int] = []
    for i, (s_ids, s_labels) in enumerate(samples, start=1):
        ids += s_ids
        labels += s_labels
        pos += list(range(len(s_ids)))
        seg += [i] * len(s_ids)
    lengths = [len(s) for s, _ in samples]
    pad = (seq_len or len(ids)) - len(ids)
    assert pad >= 0
    ids += [tokenizer.pad_token_id] * pad
    labels += [IGNORE_INDEX] * pad
    pos += list(range(pad))
    seg += [0] * pad
    if pad:
        lengths.append(pad)
    input_ids = torch.tensor([ids])
    pixels = [im for im in images if im is not None]
    return PackedBatch(
        input_ids=input_ids,
        labels=torch.tensor([labels]),
        position_ids=torch.tensor([pos]),
        segment_ids=torch.tensor([seg]),
        cu_seqlens=torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32),
        pixel_values=torch.stack(pixels) if pixels else torch.zeros(0, 3, 32, 32),
        image_positions=image_positions(input_ids, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), n_image_tokens),
    )


def stack_rows(rows: list[PackedBatch]) -> PackedBatch:
    """Packed rows of the same length as one `[B, L]` batch (image rows and cu_seqlens offset accordingly)."""
    n = rows[0]["input_ids"].shape[1]
    positions = [r["image_positions"] + torch.tensor([i, 0]) for i, r in enumerate(rows)]
    cu = [rows[0]["cu_seqlens"]] + [r["cu_seqlens"][1:] + i * n for i, r in enumerate(rows) if i]
    out = {k: torch.cat([r[k] for r in rows]) for k in ("input_ids", "labels", "position_ids", "segment_ids")}
    return PackedBatch(
        **out,
        cu_seqlens=torch.cat(cu),
        pixel_values=torch.cat([r["pixel_values"] for r in rows]),
        image_positions=torch.cat(positions),
    )


def test_tokenizer_keeps_special_tokens_whole(tmp_path):
    tok = train_tokenizer(tmp_path)
    assert 250 <= len(tok) <= 300
    ids = tok(f"{IMAGE_TOKEN}{IMAGE_TOKEN} a cat</s>", add_special_tokens=False)["input_ids"]
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ids[:2] == [image_id, image_id]
    assert ids[-1] == tok.eos_token_id
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>"


def test_pack_follows_the_batch_contract(tmp_path):
    tok = train_tokenizer(tmp_path)
    a, b = sample(tok, "describe", "a cat", n_image_tokens=3), sample(tok, "what?", "a dog")
    image = torch.zeros(3, 32, 32)
    batch = pack([a, b], [image, None], tok, 3, seq_len=len(a[0]) + len(b[0]) + 4)
    n = batch["input_ids"].shape[1]
    assert batch["cu_seqlens"].tolist() == [0, len(a[0]), len(a[0]) + len(b[0]), n]
    assert batch["segment_ids"][0].tolist() == [1] * len(a[0]) + [2] * len(b[0]) + [0] * 4
    assert batch["position_ids"][0, len(a[0])].item() == 0 and batch["position_ids"][0, -4].item() == 0
    assert batch["image_positions"].tolist() == [[0, 0]]
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_stack_rows_offsets_rows_and_cu_seqlens(tmp_path):
    tok = train_tokenizer(tmp_path)
    a, b = sample(tok, "describe", "a cat", n_image_tokens=2), sample(tok, "where", "on a mat", n_image_tokens=2)
    n = max(len(a[0]), len(b[0])) + 2
    image = torch.zeros(3, 32, 32)
    batch = stack_rows([pack([a], [image], tok, 2, seq_len=n), pack([b], [image], tok, 2, seq_len=n)])
    assert batch["input_ids"].shape == (2, n)
    assert batch["image_positions"].tolist() == [[0, 0], [1, 0]]
    assert batch["cu_seqlens"].tolist() == [0, len(a[0]), n, n + len(b[0]), 2 * n]
