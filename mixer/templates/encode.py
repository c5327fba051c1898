"""Conversation → token ids with label masking, checked against one tokenisation of the whole text.

A conversation is rendered into *pieces*, alternately masked (header, user turns) and labelled (assistant turns).
Each piece is tokenised on its own to build the mask, and the whole text is tokenised once more; if the two disagree
(BPE merged across a piece boundary, a tokenizer strips spaces around a special token, …) the sample raises
`TokenizationMismatch` naming its key, instead of being trained with labels shifted by a token (the LLaVA
"tokenization mismatch" bug class). Images are tokenised as one `<image>` token and expanded to `n_image_tokens`
copies afterwards, so the tokenizer never sees the long runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mixer.templates.spec import IMAGE_TOKEN, Template, get_template
from shards.record import IMAGE_PLACEHOLDER

IGNORE_INDEX = -100  # mixer.batch.IGNORE_INDEX, without importing torch


class TokenizationMismatch(ValueError):
    """Per-piece tokens differ from the whole text's tokens, so the label mask cannot be trusted."""

    def __init__(self, key: str, turn: int, message: str):
        super().__init__(message)
        self.key = key
        self.turn = turn


@dataclass
class Encoded:
    """One encoded sample.

    `labels[i]` is `input_ids[i]` on assistant tokens (and the end marker that closes an assistant turn),
    IGNORE_INDEX elsewhere. `image_starts` holds the offset of each image's run of `n_image_tokens` image ids;
    `turn_ends` the offset just after each assistant turn: the places a too-long sample may be cut.
    """

    input_ids: list[int]
    labels: list[int]
    image_starts: list[int]
    turn_ends: list[int]


@dataclass(frozen=True)
class Piece:
    """A run of rendered text that is either all masked or all labelled; `turn` is its conversation index."""

    text: str
    turn: int
    labelled: bool


def encode(
    conversation: list[dict],
    tokenizer: Any,
    template: Template | str,
    n_image_tokens: int,
    task: str | None = None,
    key: str = "",
) -> Encoded:
    """Token ids and labels of one conversation (`[{"role": "user"|"assistant", "content": str}, …]`).

    Each `<image>` placeholder of a user turn becomes the template's image text at the head of that turn (LLaVA's
    preprocess_multimodal does the same), its IMAGE_TOKEN expanded to `n_image_tokens` ids.
    """
    _check_n_image_tokens(n_image_tokens)
    pieces = render(conversation, tokenizer, template, task, key)
    image_id = _image_id(tokenizer)
    per_piece = _tokenize_pieces(tokenizer, [p.text for p in pieces], image_id)
    whole = _ids(tokenizer, ["".join(p.text for p in pieces)])[0]
    _check(per_piece, whole, pieces, key, tokenizer)

    out = Encoded([], [], [], [])
    for piece, ids in zip(pieces, per_piece, strict=True):
        for t in ids:
            if t == image_id:
                out.image_starts.append(len(out.input_ids))
                out.input_ids.extend([image_id] * n_image_tokens)
                out.labels.extend([IGNORE_INDEX] * n_image_tokens)
            else:
                out.input_ids.append(t)
                out.labels.append(t if piece.labelled else IGNORE_INDEX)
        if piece.labelled:
            out.turn_ends.append(len(out.input_ids))
    return out


def render(
    conversation: list[dict], tokenizer: Any, template: Template | str, task: str | None = None, key: str = ""
) -> list[Piece]:
    """The conversation as masked / labelled text pieces, images as one IMAGE_TOKEN each (pure string work)."""
    t = get_template(template) if isinstance(template, str) else template
    turns = [_turn_text(turn, t, i, key) for i, turn in enumerate(_validated(conversation, key))]
    tag = t.task_tag(task)
    first_user = next((i for i, turn in enumerate(conversation) if turn["role"] == "user"), None)
    if tag and first_user is not None:
        images, words = turns[first_user]
        turns[first_user] = (images, f"{tag} {words}" if words else tag)
    contents = [t.image_sep.join(x for x in (t.image_sep.join(images), words) if x) for images, words in turns]
    if t.chat_template:
        return _render_chat_template(conversation, contents, tokenizer, key)
    return _render_formats(conversation, contents, t, tokenizer)


def _check_n_image_tokens(n: int) -> None:
    if n < 1:
        raise ValueError(f"n_image_tokens must be >= 1, got {n}")


def _validated(conversation: list[dict], key: str) -> list[dict]:
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(f"sample {key!r}: conversation must be a non-empty list of turns")
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            raise ValueError(f"sample {key!r}: turn {i} must have role 'user' or 'assistant', got {turn!r:.80}")
        if not isinstance(turn.get("content"), str):
            raise ValueError(f"sample {key!r}: turn {i} content must be a string")
    return conversation


def _turn_text(turn: dict, t: Template, i: int, key: str) -> tuple[list[str], str]:
    """(image texts, words) of one turn: the record's placeholders move to the head of the turn, as in LLaVA."""
    content = turn["content"]
    n = content.count(IMAGE_PLACEHOLDER)
    if turn["role"] == "assistant":
        if n:
            raise ValueError(f"sample {key!r}: turn {i} (assistant) contains the image placeholder {IMAGE_PLACEHOLDER}")
        return [], content
    words = content.replace(IMAGE_PLACEHOLDER, "").strip() if n else content
    return [t.image] * n, words if t.user_text else ""


def _render_formats(conversation: list[dict], contents: list[str], t: Template, tokenizer: Any) -> list[Piece]:
    eos = tokenizer.eos_token
    if eos is None and any("{eos}" in f for f in (t.header, t.user, t.first_user or "", t.assistant)):
        raise ValueError(f"template {t.name!r} needs an eos token; tokenizer {_name(tokenizer)} has none")
    subs = {"system": t.system, "bos": tokenizer.bos_token or "", "eos": eos or ""}
    pieces: list[Piece] = []
    masked, masked_turn = t.header.format(**subs), 0
    seen_user = False
    for i, (turn, content) in enumerate(zip(conversation, contents, strict=True)):
        if turn["role"] == "user":
            fmt = t.user if seen_user or t.first_user is None else t.first_user
            seen_user = True
            if not masked:
                masked_turn = i
            masked += fmt.format(content=content, **subs)
        else:
            if masked:
                pieces.append(Piece(masked, masked_turn, False))
                masked = ""
            pieces.append(Piece(t.assistant.format(content=content, **subs), i, True))
    if masked:
        pieces.append(Piece(masked, masked_turn, False))
    return pieces


def _render_chat_template(conversation: list[dict], contents: list[str], tokenizer: Any, key: str) -> list[Piece]:
    """Pieces from the tokenizer's chat_template, found by rendering prefixes of the conversation.

    An assistant turn is the difference between rendering the conversation through that turn and rendering it up
    to the turn with the generation prompt; the masked pieces are what lies between.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"template 'hf': tokenizer {_name(tokenizer)} has no chat_template")
    messages = [{"role": turn["role"], "content": c} for turn, c in zip(conversation, contents, strict=True)]

    def rendered(n: int, prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages[:n], tokenize=False, add_generation_prompt=prompt)

    pieces: list[Piece] = []
    done, start_turn = "", 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = rendered(i, True) if i else "", rendered(i + 1, False)
        if not before.startswith(done) or not through.startswith(before):
            raise ValueError(
                f"sample {key!r}: the chat_template of {_name(tokenizer)} does not render turn {i} as an extension "
                "of the turns before it, so assistant tokens cannot be located"
            )
        if len(before) > len(done):
            pieces.append(Piece(before[len(done) :], start_turn, False))
        pieces.append(Piece(through[len(before) :], i, True))
        done, start_turn = through, i + 1
    full = rendered(len(messages), False)
    if not full.startswith(done):
        raise ValueError(f"sample {key!r}: the chat_template of {_name(tokenizer)} is not prefix-stable")
    if len(full) > len(done):
        pieces.append(Piece(full[len(done) :], start_turn, False))
    return pieces


def _name(tokenizer: Any) -> str:
    return repr(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _image_id(tokenizer: Any) -> int:
    ids = _ids(tokenizer, [IMAGE_TOKEN])[0]
    if len(ids) != 1:
        raise ValueError(
            f"tokenizer {_name(tokenizer)} has no {IMAGE_TOKEN} special token; "
            "load it with mixer.tokenizer.load_tokenizer"
        )
    return ids[0]


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _tokenize_pieces(tokenizer: Any, texts: list[str], image_id: int) -> list[list[int]]:
    """Each piece's ids as the piece tokenises in the middle of a text.

    Pieces after the first are tokenised behind one IMAGE_TOKEN, whose id is then dropped: sentencepiece-style
    tokenizers (Metaspace, prepend_scheme="first") add a "▁" at the start of a text but not after a special token,
    and a piece after the first is never at the start of the whole text.
    """
    if not texts:
        return []
    ids = _ids(tokenizer, [texts[0]] + [IMAGE_TOKEN + s for s in texts[1:]])
    for row in ids[1:]:
        assert row and row[0] == image_id, "an added special token must tokenise on its own"
    return [ids[0]] + [row[1:] for row in ids[1:]]


def _check(per_piece: list[list[int]], whole: list[int], pieces: list[Piece], key: str, tokenizer: Any) -> None:
    joined = [t for ids in per_piece for t in ids]
    if joined == whole:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(joined, whole, strict=False)) if a != b), min(len(joined), len(whole))
    )
    pos, k = 0, 0
    while k < len(per_piece) - 1 and pos + len(per_piece[k]) <= first:
        pos += len(per_piece[k])
        k += 1
    lo = max(0, first - 3)
    raise TokenizationMismatch(
        key,
        pieces[k].turn,
        f"sample {key!r}: tokenization mismatch at turn {pieces[k].turn} (token {first}): turn by turn "
        f"{joined[lo : first + 3]} but the whole text gives {whole[lo : first + 3]} "
        f"({_name(tokenizer)}, piece {pieces[k].text[:60]!r}); tokens merge across the turn boundary",
    )
