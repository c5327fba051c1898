"""llava-json: LLaVA-Instruct-150K, LLaVA-1.5 mix665k and ShareGPT4V JSON lists → conversation records.

Each item is `{id, image?, conversations: [{from: human|gpt, value}, …]}`, parsed incrementally. Roles map to
`user`/`assistant`, all turns are kept. An item with an `image` must carry exactly one `<image>` placeholder, in
its first human turn; like LLaVA's own preprocessing it is moved to the start of that turn (`"<image>\\n" + rest`)
and where it stood is kept in `meta['image_at']` (`start`, `end`, or `middle`). An item without `image` is a
text-only record and must have no placeholder. Any other item keys go to `meta`, `id` to `ids`.

`image_root` is the folder LLaVA calls `--image_folder` (holding `coco/`, `gqa/`, `ocr_vqa/`, …); when it is not
given, the folder of the JSON file. An `image` must stay inside that folder once resolved (unless the source sets
`allow_outside_root`); an http(s) URL is downloaded, any other URL scheme is a bad row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shards.readers.common import Family, Raw, RowError, Sample, SourceSpec, get_field, image_path, read_rows
from shards.readers.jsonstream import json_items
from shards.record import IMAGE_PLACEHOLDER, BadRow, Record

ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}
KNOWN_KEYS = ("id", "image", "conversations")


def _items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    return json_items(path)


def _turns(item: Any) -> list[dict[str, str]]:
    turns = get_field(item, "conversations", list)
    if not turns:
        raise RowError("empty 'conversations'")
    conversation = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"conversations[{i}] is {type(turn).__name__}, expected an object")
        speaker = turn.get("from")
        role = ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise RowError(f"conversations[{i}].from is {speaker!r}, expected 'human' or 'gpt'")
        value = turn.get("value")
        if not isinstance(value, str):
            raise RowError(f"conversations[{i}].value is {type(value).__name__}, expected str")
        if role == "assistant" and not value.strip():
            raise RowError(f"conversations[{i}] is an empty gpt turn")
        conversation.append({"role": role, "content": value})
    if conversation[0]["role"] != "user":
        raise RowError("conversations[0] is from gpt; a conversation must open with a human turn")
    if all(t["role"] == "user" for t in conversation):
        raise RowError("no gpt turn")
    return conversation


def _convert(item: Any, path: str, spec: SourceSpec) -> Sample:
    conversation = _turns(item)
    image = item.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise RowError(f"field 'image' is {image!r}, expected a file name")
    ids = {"id": item["id"]} if item.get("id") is not None else {}
    meta = {k: v for k, v in item.items() if k not in KNOWN_KEYS}
    placed = sum(t["content"].count(IMAGE_PLACEHOLDER) for t in conversation)
    if image is None:
        if placed:
            raise RowError(f"no 'image' but {placed} {IMAGE_PLACEHOLDER} placeholder(s)")
        return Sample(conversation, None, ids, meta)
    first = conversation[0]["content"]
    if placed != 1 or IMAGE_PLACEHOLDER not in first:
        in_first = first.count(IMAGE_PLACEHOLDER)
        raise RowError(
            f"'image' given: expected one {IMAGE_PLACEHOLDER} in the first human turn, "
            f"found {placed} in all turns ({in_first} in the first)"
        )
    stripped = first.strip()
    at = "middle"
    if stripped.startswith(IMAGE_PLACEHOLDER):
        at = "start"
    elif stripped.endswith(IMAGE_PLACEHOLDER):
        at = "end"
    rest = first.replace(IMAGE_PLACEHOLDER, "").strip()
    conversation[0]["content"] = f"{IMAGE_PLACEHOLDER}\n{rest}" if rest else IMAGE_PLACEHOLDER
    meta["image_at"] = at
    file, root = image_path(image.strip(), spec.image_root, path)
    return Sample(conversation, file, ids, meta, root)


LLAVA = Family(_items, _convert)


def read_llava(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a llava-json source."""
    return read_rows(spec, LLAVA)
