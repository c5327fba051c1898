"""Chat templates: exact rendered text per template, label masks, image spans, turn ends, mismatch detection."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import mixer.batch
from mixer.templates import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    TEMPLATES,
    TokenizationMismatch,
    encode,
    format_box,
    get_template,
    template_texts,
)
from mixer.tokenizer import ensure_vlm_tokens, load_tokenizer

N_IMG = 3
IMG3 = "<image><image><image>"
CHATML_LIKE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
ONE_TURN = [
    {"role": "user", "content": "<image>\nWhat is in the picture?"},
    {"role": "assistant", "content": "A cat on a red table."},
]
TWO_TURNS = ONE_TURN + [
    {"role": "user", "content": "How many dogs?"},
    {"role": "assistant", "content": "Two dogs."},
]
LLAVA_SYS = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)
PHI_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
LLAMA_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

# template -> (whole decoded text of ONE_TURN with task "vqa", the labelled text)
EXPECTED = {
    "plain": (f"{IMG3}A cat on a red table.</s>", "A cat on a red table.</s>"),
    "tinygptv": (
        f"###Human: <Img>{IMG3}</Img> What is in the picture?###Assistant: A cat on a red table.</s>",
        " A cat on a red table.</s>",
    ),
    "minigptv2": (
        f"<s>[INST] <Img>{IMG3}</Img> [vqa] What is in the picture? [/INST] A cat on a red table.</s>",
        " A cat on a red table.</s>",
    ),
    "llava_v1": (
        f"<s>{LLAVA_SYS} USER: {IMG3}\nWhat is in the picture? ASSISTANT: A cat on a red table.</s>",
        " A cat on a red table.</s>",
    ),
    "phi": (
        f"{PHI_SYS} USER: {IMG3}\nWhat is in the picture? ASSISTANT: A cat on a red table.</s>",
        " A cat on a red table.</s>",
    ),
    "llama": (
        f"<s>[INST] <<SYS>>\n{LLAMA_SYS}\n<</SYS>>\n\n{IMG3}\nWhat is in the picture?"
        " [/INST] A cat on a red table. </s>",
        " A cat on a red table. </s>",
    ),
    "hf": (
        f"<|user|>\n{IMG3}\nWhat is in the picture?</s>\n<|assistant|>\nA cat on a red table.</s>\n",
        "A cat on a red table.</s>\n",
    ),
}


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    t = load_tokenizer(str(tiny_tokenizer))
    t.chat_template = CHATML_LIKE  # used by the `hf` template only
    return t


def text(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def answers(tok, enc) -> list[str]:
    """Decoded labels of each assistant turn: the labelled run that ends at each turn end."""
    out, start = [], 0
    for end in enc.turn_ends:
        i = end
        while i > start and enc.labels[i - 1] != IGNORE_INDEX:
            i -= 1
        out.append(text(tok, enc.labels[i:end]))
        start = end
    return out


def check_invariants(tok, enc, n_image_tokens: int) -> None:
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert len(enc.labels) == len(enc.input_ids)
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(enc.labels, enc.input_ids, strict=True))
    in_span = set()
    for s in enc.image_starts:
        assert enc.input_ids[s : s + n_image_tokens] == [image_id] * n_image_tokens
        assert enc.labels[s : s + n_image_tokens] == [IGNORE_INDEX] * n_image_tokens
        in_span.update(range(s, s + n_image_tokens))
    assert {i for i, t in enumerate(enc.input_ids) if t == image_id} == in_span
    labelled = {i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX}
    assert all(e - 1 in labelled for e in enc.turn_ends)


def test_constants_match_the_batch_contract():
    assert IMAGE_TOKEN == mixer.batch.IMAGE_TOKEN
    assert IGNORE_INDEX == mixer.batch.IGNORE_INDEX


def test_every_template_has_an_expected_rendering():
    assert set(EXPECTED) == set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_turn_renders_exactly_and_masks_all_but_the_answer(tok, name):
    whole, answer = EXPECTED[name]
    enc = encode(ONE_TURN, tok, name, N_IMG, task="vqa", key="k")
    assert text(tok, enc.input_ids) == whole
    assert text(tok, [lab for lab in enc.labels if lab != IGNORE_INDEX]) == answer
    assert answers(tok, enc) == [answer]
    assert len(enc.image_starts) == 1
    assert enc.turn_ends == [len(enc.input_ids)]
    check_invariants(tok, enc, N_IMG)


MULTI = {
    "plain": (f"{IMG3}A cat on a red table.</s>Two dogs.</s>", ["A cat on a red table.</s>", "Two dogs.</s>"]),
    "tinygptv": (
        f"###Human: <Img>{IMG3}</Img> What is in the picture?###Assistant: A cat on a red table.</s>"
        "###Human: How many dogs?###Assistant: Two dogs.</s>",
        [" A cat on a red table.</s>", " Two dogs.</s>"],
    ),
    "minigptv2": (
        f"<s>[INST] <Img>{IMG3}</Img> What is in the picture? [/INST] A cat on a red table.</s>"
        "[INST] How many dogs? [/INST] Two dogs.</s>",
        [" A cat on a red table.</s>", " Two dogs.</s>"],
    ),
    "llava_v1": (
        f"<s>{LLAVA_SYS} USER: {IMG3}\nWhat is in the picture? ASSISTANT: A cat on a red table.</s>"
        "USER: How many dogs? ASSISTANT: Two dogs.</s>",
        [" A cat on a red table.</s>", " Two dogs.</s>"],
    ),
    "llama": (
        f"<s>[INST] <<SYS>>\n{LLAMA_SYS}\n<</SYS>>\n\n{IMG3}\nWhat is in the picture?"
        " [/INST] A cat on a red table. </s><s>[INST] How many dogs? [/INST] Two dogs. </s>",
        [" A cat on a red table. </s>", " Two dogs. </s>"],
    ),
    "hf": (
        f"<|user|>\n{IMG3}\nWhat is in the picture?</s>\n<|assistant|>\nA cat on a red table.</s>\n"
        "<|user|>\nHow many dogs?</s>\n<|assistant|>\nTwo dogs.</s>\n",
        ["A cat on a red table.</s>\n", "Two dogs.</s>\n"],
    ),
}


@pytest.mark.parametrize("name", sorted(MULTI))
def test_multi_turn_labels_each_answer_and_turn_ends_follow_them(tok, name):
    whole, expected = MULTI[name]
    enc = encode(TWO_TURNS, tok, name, N_IMG, key="k")
    assert text(tok, enc.input_ids) == whole
    assert answers(tok, enc) == expected
    assert len(enc.turn_ends) == 2
    for end, ans in zip(enc.turn_ends, expected, strict=True):
        assert text(tok, enc.input_ids[:end]).endswith(ans)
    n_labelled = sum(lab != IGNORE_INDEX for lab in enc.labels)
    assert n_labelled == sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in expected)
    check_invariants(tok, enc, N_IMG)


def save_phi_like(folder: Path) -> None:
    """A Phi-2-like tokenizer saved to `folder`: <|endoftext|> as bos/eos, no <image>, no pad."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.train_from_iterator([a["content"] for a in TWO_TURNS] + template_texts(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.save_pretrained(str(folder))


def test_phi_ends_turns_with_the_tokenizers_own_eos(tmp_path):
    # A Phi-2-like tokenizer: load_tokenizer adds the <image> and pad tokens it lacks.
    save_phi_like(tmp_path)
    phi = load_tokenizer(str(tmp_path))
    enc = encode(ONE_TURN, phi, "phi", 2, key="k")
    assert text(phi, enc.input_ids) == (
        f"{PHI_SYS} USER: <image><image>\nWhat is in the picture? ASSISTANT: A cat on a red table.<|endoftext|>"
    )
    assert answers(phi, enc) == [" A cat on a red table.<|endoftext|>"]
    assert enc.input_ids[-1] == phi.eos_token_id and enc.labels[-1] == phi.eos_token_id


def test_image_placeholder_at_the_end_of_the_turn_moves_to_its_head(tok):
    at_end = [{"role": "user", "content": "What is in the picture?\n<image>"}, ONE_TURN[1]]
    for name in TEMPLATES:
        assert encode(at_end, tok, name, N_IMG) == encode(ONE_TURN, tok, name, N_IMG)


def test_text_only_conversation_has_no_image_tokens(tok):
    conv = [{"role": "user", "content": "What is a dog?"}, {"role": "assistant", "content": "A small animal."}]
    enc = encode(conv, tok, "llava_v1", N_IMG, key="k")
    assert text(tok, enc.input_ids) == f"<s>{LLAVA_SYS} USER: What is a dog? ASSISTANT: A small animal.</s>"
    assert enc.image_starts == []
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) not in enc.input_ids
    enc = encode(conv, tok, "tinygptv", N_IMG)
    assert text(tok, enc.input_ids) == "###Human: What is a dog?###Assistant: A small animal.</s>"
    enc = encode(conv, tok, "plain", N_IMG)
    assert text(tok, enc.input_ids) == "A small animal.</s>"


def test_plain_drops_the_instruction_and_keeps_the_image(tok):
    conv = [{"role": "user", "content": "Describe the image in brief.\n<image>"}, ONE_TURN[1]]
    enc = encode(conv, tok, "plain", N_IMG)
    assert text(tok, enc.input_ids) == f"{IMG3}A cat on a red table.</s>"
    assert enc.image_starts == [0]


@pytest.mark.parametrize(
    ("task", "tag"),
    [
        ("vqa", " [vqa]"),
        ("ocr", " [vqa]"),
        ("caption", " [caption]"),
        ("grounding", " [grounding]"),
        ("refer", " [refer]"),
        ("identify", " [identify]"),
        ("detection", " [detection]"),
        ("conversation", ""),
        (None, ""),
    ],
)
def test_minigptv2_task_tags(tok, task, tag):
    enc = encode(TWO_TURNS, tok, "minigptv2", N_IMG, task=task)
    assert text(tok, enc.input_ids) == (
        f"<s>[INST] <Img>{IMG3}</Img>{tag} What is in the picture? [/INST] A cat on a red table.</s>"
        "[INST] How many dogs? [/INST] Two dogs.</s>"
    )


def test_minigptv2_tag_on_a_text_only_turn(tok):
    conv = [{"role": "user", "content": "Where is the dog?"}, {"role": "assistant", "content": "{<5><5><55><55>}"}]
    enc = encode(conv, tok, "minigptv2", N_IMG, task="refer")
    assert text(tok, enc.input_ids) == "<s>[INST] [refer] Where is the dog? [/INST] {<5><5><55><55>}</s>"
    assert answers(tok, enc) == [" {<5><5><55><55>}</s>"]


def test_format_box():
    assert format_box((10, 20, 110, 220), 200, 400) == "{<5><5><55><55>}"
    assert format_box((0, 0, 640, 480), 640, 480) == "{<0><0><100><100>}"
    assert format_box((-5, 3, 700, 479), 640, 480) == "{<0><1><100><100>}"  # clamped to the grid
    with pytest.raises(ValueError, match="x2 < x1"):
        format_box((50, 0, 10, 10), 100, 100)
    with pytest.raises(ValueError, match="positive"):
        format_box((0, 0, 1, 1), 0, 100)


def test_hf_without_chat_template_names_the_tokenizer(tok, tiny_tokenizer):
    plain_tok = copy.deepcopy(tok)
    plain_tok.chat_template = None
    with pytest.raises(ValueError, match=f"tokenizer '{tiny_tokenizer}' has no chat_template"):
        encode(ONE_TURN, plain_tok, "hf", N_IMG, key="k")


def test_mismatch_across_a_turn_boundary_is_reported_by_key(tok):
    # The space before the answer left on the prompt side: " the" is one BPE token in the whole text, " " + "the"
    # turn by turn, so masking by the per-turn tokens would be off by one.
    bad = dataclasses.replace(get_template("llava_v1"), user="USER: {content} ASSISTANT: ", assistant="{content}</s>")
    conv = [ONE_TURN[0], {"role": "assistant", "content": "the cat."}]
    assert (
        tok(" the", add_special_tokens=False)["input_ids"]
        != tok(" ", add_special_tokens=False)["input_ids"] + tok("the", add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(TokenizationMismatch, match="sample 'coco/000000042': tokenization mismatch at turn 0") as e:
        encode(conv, tok, bad, N_IMG, key="coco/000000042")
    assert e.value.key == "coco/000000042" and e.value.turn == 0
    encode(conv, tok, "llava_v1", N_IMG, key="coco/000000042")  # the shipped boundary does not mismatch


def test_unknown_template_lists_the_known_ones(tok):
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'; known: plain, tinygptv, minigptv2, llava_v1"):
        get_template("vicuna")
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        encode(ONE_TURN, tok, "vicuna", N_IMG)


def test_bad_conversations_name_the_sample(tok):
    with pytest.raises(ValueError, match="sample 'k7': turn 1 must have role"):
        encode([ONE_TURN[0], {"role": "gpt", "content": "x"}], tok, "llava_v1", N_IMG, key="k7")
    with pytest.raises(ValueError, match=r"sample 'k7': turn 1 \(assistant\) contains the image placeholder"):
        encode([ONE_TURN[0], {"role": "assistant", "content": "<image>"}], tok, "llava_v1", N_IMG, key="k7")
    with pytest.raises(ValueError, match="n_image_tokens must be >= 1, got 0"):
        encode(ONE_TURN, tok, "llava_v1", 0)


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny BPE with Metaspace(prepend_scheme="first"), the pre-tokeniser of Llama / TinyLlama in transformers 5."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>", "<pad>", "<unk>", IMAGE_TOKEN], show_progress=False
    )
    bpe.train_from_iterator([t["content"] for t in TWO_TURNS] + template_texts(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return ensure_vlm_tokens(tok)


def test_sentencepiece_style_tokenizer_does_not_mismatch():
    # Metaspace with prepend_scheme="first" puts "▁" before a text's first word but not after a special token, so
    # naive per-piece tokenisation would disagree with the whole text.
    sp = metaspace_tokenizer()
    assert (
        sp("USER:", add_special_tokens=False)["input_ids"] != sp("</s>USER:", add_special_tokens=False)["input_ids"][1:]
    )
    for name in ("llava_v1", "llama", "tinygptv", "minigptv2"):
        enc = encode(TWO_TURNS, sp, name, N_IMG, key="k")
        assert len(enc.turn_ends) == 2
        check_invariants(sp, enc, N_IMG)


WORDS = ["a", "the", "cat", "dog", "red", "table", "What", "is", "How", "many", "two", "3", "?", ".", ",", "!", "'s"]


@st.composite
def conversations(draw):
    def sentence():
        ws = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8))
        return " ".join(ws)

    n = draw(st.integers(1, 3))
    conv = []
    for _ in range(n):
        conv += [{"role": "user", "content": sentence()}, {"role": "assistant", "content": sentence()}]
    where = draw(st.sampled_from(["none", "start", "end"]))
    if where == "start":
        conv[0]["content"] = "<image>\n" + conv[0]["content"]
    elif where == "end":
        conv[0]["content"] += " <image>"
    if draw(st.booleans()):  # a trailing question without an answer
        conv.append({"role": "user", "content": sentence()})
    return conv


@settings(max_examples=60, deadline=None)
@given(
    conv=conversations(),
    name=st.sampled_from(sorted(TEMPLATES)),
    n_image_tokens=st.integers(1, 9),
    task=st.sampled_from([None, "vqa", "caption", "conversation"]),
)
def test_encoded_turns_images_and_invariants(tok, conv, name, n_image_tokens, task):
    enc = encode(conv, tok, name, n_image_tokens, task=task, key="h")
    assert len(enc.turn_ends) == sum(t["role"] == "assistant" for t in conv)
    assert len(enc.image_starts) == sum(t["content"].count("<image>") for t in conv)
    check_invariants(tok, enc, n_image_tokens)
