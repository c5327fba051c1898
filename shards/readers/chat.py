"""Chat turns in the shapes the instruction sets ship them, checked and turned into `{role, content}` turns.

`sharegpt_turns` reads `[{from, value}]` (LLaVA, ShareGPT, LLaVA-OneVision) or `[{role, content}]` (OpenAI-style)
lists; `place_images` checks the `<image>` placeholders against the number of images a row has and puts a single
one where LLaVA's preprocessing puts it (the start of the first user turn).
"""

from __future__ import annotations

from typing import Any

from shards.readers.common import RowError
from shards.record import IMAGE_PLACEHOLDER

# FastChat's ShareGPT role names, plus the OpenAI ones; a system turn has no slot in our templates (a bad row).
ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}


def _turn_keys(turn: dict[str, Any]) -> tuple[str, str]:
    return ("from", "value") if "from" in turn or "value" in turn else ("role", "content")


def sharegpt_turns(turns: Any, field: str = "conversations", drop_leading_assistant: bool = False) -> list[dict]:
    """`[{from, value}]` or `[{role, content}]` → user/assistant turns; a `RowError` naming the turn otherwise.

    Turns must alternate, opening with the user, with a non-empty answer in every assistant turn. With
    `drop_leading_assistant`, assistant turns before the first user turn are dropped (as FastChat does with
    ShareGPT, whose split conversations often open mid-dialogue).
    """
    if not isinstance(turns, list):
        raise RowError(f"field {field!r} is {type(turns).__name__}, expected a list")
    conversation: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"{field}[{i}] is {type(turn).__name__}, expected an object")
        role_key, text_key = _turn_keys(turn)
        speaker = turn.get(role_key)
        role = ROLE_NAMES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise RowError(f"{field}[{i}].{role_key} is {speaker!r}, expected a user or assistant role")
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise RowError(f"{field}[{i}].{text_key} is {type(text).__name__}, expected str")
        if not conversation and role == "assistant" and drop_leading_assistant:
            continue
        expected = "user" if len(conversation) % 2 == 0 else "assistant"
        if role != expected:
            raise RowError(f"{field}[{i}] is a second {role} turn in a row; turns must alternate, user first")
        if role == "assistant" and not text.strip():
            raise RowError(f"{field}[{i}] is an empty assistant turn")
        conversation.append({"role": role, "content": text})
    if not any(t["role"] == "assistant" for t in conversation):
        raise RowError(f"no assistant turn in {field!r}")
    return conversation


def qa_turns(pairs: list[tuple[str, str]], field: str) -> list[dict[str, str]]:
    """User/assistant turns from (question, answer) pairs; an empty answer is a `RowError` naming the pair."""
    turns = []
    for i, (question, answer) in enumerate(pairs):
        if not answer.strip():
            raise RowError(f"{field}[{i}] has an empty answer")
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if not turns:
        raise RowError(f"empty {field!r}")
    return turns


def place_images(conversation: list[dict[str, str]], n_images: int) -> str | None:
    """Check and normalise the placeholders in place; returns where the image stood (`start`/`end`/`middle`/`added`).

    No image: no placeholder allowed (None is returned). One image: either no placeholder at all (The Cauldron
    leaves it out; one is added) or exactly one, in the first user turn; it is moved to the start of that turn.
    """
    placed = sum(t["content"].count(IMAGE_PLACEHOLDER) for t in conversation)
    if n_images == 0:
        if placed:
            raise RowError(f"no image but {placed} {IMAGE_PLACEHOLDER} placeholder(s)")
        return None
    if n_images != 1:
        raise RowError(f"multi-image samples not supported yet ({n_images} images)")
    first = conversation[0]["content"]
    if placed == 0:
        at = "added"
    elif placed == 1 and IMAGE_PLACEHOLDER in first:
        stripped = first.strip()
        at = "middle"
        if stripped.startswith(IMAGE_PLACEHOLDER):
            at = "start"
        elif stripped.endswith(IMAGE_PLACEHOLDER):
            at = "end"
    else:
        raise RowError(
            f"one image: expected one {IMAGE_PLACEHOLDER} in the first user turn or none, found {placed} in all turns"
        )
    rest = first.replace(IMAGE_PLACEHOLDER, "").strip()
    conversation[0]["content"] = f"{IMAGE_PLACEHOLDER}\n{rest}" if rest else IMAGE_PLACEHOLDER
    return at
