"""FastEncoder gives exactly `encode`'s result for every sample `encode` accepts, over every shipped template.

Compared on the template fixtures, random conversations (hypothesis), three tokenizer styles (byte-level BPE,
sentencepiece-like Metaspace, Phi-2-like with one bos/eos token), the Rust fast path and the `tokenizer(...)`
fallback, and every record of the demo corpus.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_templates import CHATML_LIKE, ONE_TURN, TWO_TURNS, conversations, metaspace_tokenizer, save_phi_like

import mixer.templates.fast as fast
from mixer.build import source_specs
from mixer.demo import write_demo_corpus
from mixer.manifest import load_manifest
from mixer.templates import (
    IMAGE_TOKEN,
    TEMPLATES,
    FastEncoder,
    TokenizationMismatch,
    encode,
    get_template,
)
from mixer.templates.encode import render
from mixer.tokenizer import load_tokenizer, train_tokenizer
from shards.readers import get_reader
from shards.record import Record

TASKS = [None, "vqa", "ocr", "caption", "grounding", "refer", "identify", "detection", "conversation"]
FIXTURES = [
    ONE_TURN,
    TWO_TURNS,
    [{"role": "user", "content": "What is a dog?"}, {"role": "assistant", "content": "A small animal."}],
    [{"role": "user", "content": "What is in the picture?\n<image>"}, ONE_TURN[1]],
    [{"role": "user", "content": "Where is the dog?"}, {"role": "assistant", "content": "{<5><5><55><55>}"}],
    TWO_TURNS + [{"role": "user", "content": "And the cat?"}],  # a trailing question without an answer
    [{"role": "assistant", "content": "An answer first."}, {"role": "user", "content": "<image>"}],
]
REPO = Path(__file__).resolve().parents[2]


def with_chat_template(tok):
    tok.chat_template = CHATML_LIKE  # the `hf` template renders with it
    return tok


@pytest.fixture(scope="module")
def bpe(tiny_tokenizer):
    return with_chat_template(load_tokenizer(str(tiny_tokenizer)))


@pytest.fixture(scope="module")
def sentencepiece_like():
    # Metaspace with prepend_scheme="first": a text's first word gets "▁", a word after a special token does not.
    return with_chat_template(metaspace_tokenizer())


@pytest.fixture(scope="module")
def phi_like(tmp_path_factory):
    # One <|endoftext|> as bos and eos, no <image> or pad until load_tokenizer adds them.
    folder = tmp_path_factory.mktemp("phi_like")
    save_phi_like(folder)
    return with_chat_template(load_tokenizer(str(folder)))


@pytest.fixture(params=["bpe", "sentencepiece_like", "phi_like"])
def tok(request):
    return request.getfixturevalue(request.param)


def assert_same(tok, conv, name, n_image_tokens, task, key="k") -> bool:
    """FastEncoder == encode where encode accepts the sample; False (nothing compared) where encode rejects it."""
    try:
        want = encode(conv, tok, name, n_image_tokens, task=task, key=key)
    except TokenizationMismatch:
        return False
    assert FastEncoder(tok, name, n_image_tokens)(conv, task=task, key=key) == want, (name, task, conv)
    return True


def test_the_rust_path_is_taken_for_fast_tokenizers(bpe, sentencepiece_like, phi_like):
    for t in (bpe, sentencepiece_like, phi_like):
        assert fast.rust_batch(t) is not None
        texts = ["USER: a cat ASSISTANT:", f"{IMAGE_TOKEN} two dogs</s>", ""]
        assert fast.rust_batch(t)(texts) == t(texts, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_fixtures_encode_identically(tok, name):
    compared = sum(assert_same(tok, conv, name, n, task) for conv in FIXTURES for n in (1, 3) for task in TASKS)
    assert compared == len(FIXTURES) * 2 * len(TASKS)  # the shipped templates never mismatch on these


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_fallback_without_the_rust_backend_encodes_identically(bpe, name, monkeypatch):
    monkeypatch.setattr(fast, "rust_batch", lambda tokenizer: None)
    for conv in FIXTURES:
        assert assert_same(bpe, conv, name, 2, "vqa")


def test_a_backend_with_truncation_is_not_called_directly(tiny_tokenizer):
    t = load_tokenizer(str(tiny_tokenizer))
    t.backend_tokenizer.enable_truncation(max_length=2)  # the 🤗 call switches this off; the backend would truncate
    assert fast.rust_batch(t) is None
    assert assert_same(t, TWO_TURNS, "llava_v1", 3, None)


@settings(max_examples=80, deadline=None)
@given(
    conv=conversations(),
    name=st.sampled_from(sorted(TEMPLATES)),
    n_image_tokens=st.integers(1, 9),
    task=st.sampled_from(TASKS),
    which=st.sampled_from(["bpe", "sentencepiece_like", "phi_like"]),
)
def test_random_conversations_encode_identically(
    bpe, sentencepiece_like, phi_like, conv, name, n_image_tokens, task, which
):
    tokenizers = {"bpe": bpe, "sentencepiece_like": sentencepiece_like, "phi_like": phi_like}
    assert_same(tokenizers[which], conv, name, n_image_tokens, task)


def test_bad_input_raises_as_encode_does(bpe):
    with pytest.raises(ValueError, match="n_image_tokens must be >= 1, got 0"):
        FastEncoder(bpe, "llava_v1", 0)
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        FastEncoder(bpe, "vicuna", 3)
    enc = FastEncoder(bpe, "llava_v1", 3)
    with pytest.raises(ValueError, match="sample 'k7': turn 1 must have role"):
        enc([ONE_TURN[0], {"role": "gpt", "content": "x"}], key="k7")
    with pytest.raises(ValueError, match=r"sample 'k7': turn 1 \(assistant\) contains the image placeholder"):
        enc([ONE_TURN[0], {"role": "assistant", "content": "<image>"}], key="k7")


def test_a_mismatching_sample_differs_from_its_whole_text_length(bpe):
    # encode rejects it and the length index stores length 0 for it; should a stale index still plan it at its
    # whole-text length, the loader's planned-length check sees the fast result disagree.
    bad = dataclasses.replace(get_template("llava_v1"), user="USER: {content} ASSISTANT: ", assistant="{content}</s>")
    conv = [ONE_TURN[0], {"role": "assistant", "content": "the cat."}]
    with pytest.raises(TokenizationMismatch):
        encode(conv, bpe, bad, 3, key="k")
    whole = bpe("".join(p.text for p in render(conv, bpe, bad)), add_special_tokens=False)["input_ids"]
    whole_length = len(whole) + whole.count(bpe.convert_tokens_to_ids(IMAGE_TOKEN)) * (3 - 1)
    assert len(FastEncoder(bpe, bad, 3)(conv, key="k").input_ids) != whole_length


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory) -> tuple[list[Record], Path]:
    """Every record the readers make of a small demo corpus, and the demo tokenizer trained on its text."""
    root = tmp_path_factory.mktemp("demo_corpus")
    write_demo_corpus(root, "http://127.0.0.1:9/", seed=0, scale=0.1)  # URLs are only written, never fetched
    m = load_manifest(REPO / "manifests" / "demo.yaml", check_paths=False, data_root=str(root))
    records = [r for spec in source_specs(m) for r in get_reader(spec.kind)(spec) if isinstance(r, Record)]
    tok_dir = root / "tokenizer"
    train_tokenizer((root / "tokenizer_corpus.txt").read_text(encoding="utf-8").splitlines(), tok_dir)
    return records, tok_dir


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_demo_record_encodes_identically(demo_records, name):
    records, tok_dir = demo_records
    tok = with_chat_template(load_tokenizer(str(tok_dir)))
    assert {r.source for r in records} == set(load_manifest(REPO / "manifests/demo.yaml", check_paths=False).sources)
    compared = sum(assert_same(tok, r.conversation, name, 5, r.task, key=f"{r.source}/{r.row}") for r in records)
    assert compared == len(records) > 200  # the demo corpus holds no mismatching sample for any template
