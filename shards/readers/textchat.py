"""sharegpt-json, alpaca-json, unnatural-jsonl: text-only instruction and chat sets → records with no image.

Kept in the mixture so the LLM keeps its language (MiniCPM-V's ~10% text-only; TinyGPT-V's stage 4 uses Unnatural
Instructions). Records have `image: None` and no `<image>` placeholder (one in the text is a bad row), and go through
the same templates, loss masks and tokenisation check as LLaVA's text-only rows.

- ShareGPT (`ShareGPT_V3_unfiltered_cleaned_split.json`): a JSON list of `{id, conversations: [{from, value}]}`.
  Roles as FastChat maps them (`human`/`user` → user; `gpt`/`chatgpt`/`bing`/`bard` → assistant); the split
  conversations often open with a `gpt` turn, which is dropped as FastChat does, as is a last human turn left
  unanswered; `meta['dropped_turns']` counts them. A `system` turn, turns that do not alternate, or no assistant
  turn left is a bad row.
- Alpaca (`alpaca_data.json`): a JSON list of `{instruction, input, output}`; the user turn is the instruction, then
  a blank line and the input when there is one.
- Unnatural Instructions (`core_data.jsonl`, `full_data.jsonl`): one JSON object per line,
  `{instruction, instances: [{instruction_with_input, input, constraints, output}], reformulations?}`. As
  MiniGPT-v2's `UnnaturalDataset` (TinyGPT-V's stage 4): the first instance, user turn `instruction_with_input` then
  a space and `constraints` when present, answer `output`. Reformulations are not expanded (they are paraphrases of
  the same examples); their count goes to `meta['reformulations']`.

Other item keys go to `meta`, `id` to `ids`. `image_root` is not used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from shards.readers.chat import ROLE_NAMES, place_images, sharegpt_turns
from shards.readers.common import Family, Raw, RowError, Sample, SourceSpec, decode_utf8, get_field, get_text, read_rows
from shards.readers.files import text_lines
from shards.readers.jsonstream import json_items
from shards.record import BadRow, Record


def _json_list(path: str, spec: SourceSpec) -> Iterator[Raw]:
    return json_items(path)


def _jsonl(path: str, spec: SourceSpec) -> Iterator[Raw]:
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            yield Raw(json.loads(decode_utf8(line, "line")), number, "")
        except RowError as e:
            yield Raw(None, number, "", str(e))
        except json.JSONDecodeError as e:
            yield Raw(None, number, "", f"not JSON: {e.msg} at column {e.colno}")


def _text_only(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    place_images(conversation, 0)  # a placeholder in a text-only set is a bad row, not an image to invent
    return conversation


def _role(turn: Any) -> str | None:
    speaker = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
    return ROLE_NAMES.get(speaker.lower()) if isinstance(speaker, str) else None


def _sharegpt(item: Any, path: str, spec: SourceSpec) -> Sample:
    turns = get_field(item, "conversations", list)
    conversation = _text_only(sharegpt_turns(turns, drop_leading_assistant=True))
    dropped = next((i for i, t in enumerate(turns) if _role(t) == "user"), 0)
    if conversation[-1]["role"] == "user":  # a question left unanswered teaches nothing
        conversation.pop()
        dropped += 1
    meta = {k: v for k, v in item.items() if k not in ("id", "conversations")}
    if dropped:
        meta["dropped_turns"] = dropped
    ids = {"id": item["id"]} if item.get("id") is not None else {}
    return Sample(conversation, None, ids, meta)


def _alpaca(item: Any, path: str, spec: SourceSpec) -> Sample:
    instruction = get_text(item, "instruction")
    extra = item.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RowError(f"field 'input' is {type(extra).__name__}, expected str")
    prompt = f"{instruction}\n\n{extra.strip()}" if extra and extra.strip() else instruction
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": get_text(item, "output")}]
    meta = {k: v for k, v in item.items() if k not in ("instruction", "input", "output")}
    return Sample(_text_only(conversation), None, {}, meta)


def _unnatural(item: Any, path: str, spec: SourceSpec) -> Sample:
    instances = get_field(item, "instances", list)
    if not instances:
        raise RowError("empty 'instances'")
    first = instances[0]
    prompt = get_text(first, "instruction_with_input")
    constraints = first.get("constraints")
    if isinstance(constraints, str) and constraints.strip():
        prompt = f"{prompt} {constraints.strip()}"
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": get_text(first, "output")}]
    meta: dict[str, Any] = {"instruction": item.get("instruction")}
    if isinstance(item.get("reformulations"), list):
        meta["reformulations"] = len(item["reformulations"])
    return Sample(_text_only(conversation), None, {}, meta)


SHAREGPT = Family(_json_list, _sharegpt)
ALPACA = Family(_json_list, _alpaca)
UNNATURAL = Family(_jsonl, _unnatural)


def read_sharegpt(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a sharegpt-json source."""
    return read_rows(spec, SHAREGPT)


def read_alpaca(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of an alpaca-json source."""
    return read_rows(spec, ALPACA)


def read_unnatural(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of an unnatural-jsonl source."""
    return read_rows(spec, UNNATURAL)
