"""The tiny-tokenizer trainer and `load_tokenizer`: save/load round trip, determinism, added VLM tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mixer.templates import IMAGE_TOKEN
from mixer.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

TEXTS = [f"The {c} cat sat on mat number {i}. USER: what? ASSISTANT: a {c} cat." for i in range(60) for c in "ab"]
PROBES = ["The a cat sat.", "USER: <image>\nwhat? ASSISTANT: a cat.</s>", "naïve café ☕ 12345", ""]


def ids(tok, s: str) -> list[int]:
    return tok(s, add_special_tokens=False)["input_ids"]


def test_saved_tokenizer_loads_back_through_auto_tokenizer(tmp_path: Path):
    trained = train_tokenizer(TEXTS, tmp_path, vocab_size=300)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(loaded) == len(trained) <= 300
    for s in PROBES:
        assert ids(loaded, s) == ids(trained, s)
    assert [loaded.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert IMAGE_TOKEN in loaded.all_special_tokens
    assert ids(loaded, "a<image>b")[1] == 4 and len(ids(loaded, IMAGE_TOKEN)) == 1


def test_training_is_deterministic(tmp_path: Path):
    train_tokenizer(TEXTS, tmp_path / "one", vocab_size=300)
    train_tokenizer(TEXTS, tmp_path / "two", vocab_size=300)
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == (tmp_path / "two" / "tokenizer.json").read_bytes()
    train_tokenizer(TEXTS[:40], tmp_path / "three", vocab_size=300)
    assert (tmp_path / "three" / "tokenizer.json").read_bytes() != (tmp_path / "one" / "tokenizer.json").read_bytes()


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    return load_tokenizer(str(tiny_tokenizer))


@settings(max_examples=50, deadline=None)
@given(s=st.text(max_size=40).filter(lambda s: "<" not in s))  # "<" could spell a special token
def test_byte_level_round_trips_any_text_without_unk(tiny, s):
    tok = tiny
    out = ids(tok, s)
    assert tok.unk_token_id not in out
    assert tok.decode(out, clean_up_tokenization_spaces=False) == s


def test_load_tokenizer_adds_image_and_pad_to_a_phi2_like_tokenizer(tmp_path: Path):
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.train_from_iterator(TEXTS, trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(
        str(tmp_path)
    )
    raw = AutoTokenizer.from_pretrained(str(tmp_path))
    assert raw.pad_token is None and len(ids(raw, IMAGE_TOKEN)) > 1

    tok = load_tokenizer(str(tmp_path))
    assert len(tok) == len(raw) + 1  # the model must resize its embeddings to len(tokenizer)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert image_id == len(raw)
    assert ids(tok, "a<image>b") == ids(raw, "a") + [image_id] + ids(raw, "b")
    assert IMAGE_TOKEN in tok.all_special_tokens
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == tok.eos_token_id


def test_load_tokenizer_keeps_a_tokenizer_that_has_everything(tiny_tokenizer):
    raw = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    tok = load_tokenizer(str(tiny_tokenizer))
    assert len(tok) == len(raw)
    assert tok.pad_token == "<pad>"
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == raw.convert_tokens_to_ids(IMAGE_TOKEN) == 4
