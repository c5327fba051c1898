"""A shipped chat template (`mixer.templates`) as the Jinja `chat_template` a 🤗 processor renders.

The Jinja text is generated from the same `Template` fields `mixer.templates.encode` lays out (header, first user
turn, user turns, assistant turns, image text and separator), with the tokenizer's own bos / eos text filled in, so
`processor.apply_chat_template(messages)` gives the ids training used. A message's content is a string (its
`<image>` placeholders move to the head of the turn, as in training) or 🤗's list of `{"type": "image"}` /
`{"type": "text", "text": …}` parts. MiniGPT-v2's task tags are the user's words: write `[vqa] question`.
The `hf` template (the tokenizer's own chat_template) is passed through unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from mixer.templates import IMAGE_TOKEN, get_template


def _split(fmt: str, subs: dict[str, str]) -> tuple[str, str]:
    """A format string with `{content}` as the (text before, text after) it, other fields filled in."""
    before, _, after = fmt.partition("{content}")
    return before.format(**subs), after.format(**subs)


def _lit(text: str) -> str:
    # a JSON string is a valid Jinja string literal for the escapes json.dumps emits (\n, \", \\, \t, \uXXXX)
    return json.dumps(text)


def chat_template(template: str, tokenizer: Any) -> str:
    """The Jinja chat template rendering conversations exactly as the shipped template `template` does."""
    t = get_template(template)
    if t.chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"template 'hf': the tokenizer {tokenizer.name_or_path!r} has no chat_template")
        return tokenizer.chat_template
    subs = {"system": t.system, "bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""}
    user = _split(t.user, subs)
    first = _split(t.first_user, subs) if t.first_user is not None else user
    assistant = _split(t.assistant, subs)
    return "".join(
        [
            "{%- set image_text = " + _lit(t.image) + " -%}",
            "{%- set image_sep = " + _lit(t.image_sep) + " -%}",
            "{{- " + _lit(t.header.format(**subs)) + " -}}",
            "{%- set ns = namespace(seen_user=false) -%}",
            "{%- for message in messages -%}",
            "{%- set parts = namespace(images=0, text='') -%}",
            "{%- if message['content'] is string -%}",
            f"{{%- set parts.images = message['content'].count({_lit(IMAGE_TOKEN)}) -%}}",
            "{%- set parts.text = message['content'] -%}",
            "{%- else -%}{%- for part in message['content'] -%}",
            "{%- if part['type'] == 'image' -%}{%- set parts.images = parts.images + 1 -%}",
            "{%- elif part['type'] == 'text' -%}{%- set parts.text = parts.text + part['text'] -%}{%- endif -%}",
            "{%- endfor -%}{%- endif -%}",
            "{%- if message['role'] == 'user' -%}",
            # as training: placeholders move to the head of the turn, the words are stripped around them
            "{%- if parts.images -%}"
            f"{{%- set parts.text = parts.text.replace({_lit(IMAGE_TOKEN)}, '').strip() -%}}"
            "{%- endif -%}",
            "{%- set words = parts.text -%}" if t.user_text else "{%- set words = '' -%}",
            "{%- set pieces = [image_text] * parts.images + ([words] if words else []) -%}",
            "{%- set content = pieces | join(image_sep) -%}",
            "{%- if ns.seen_user -%}{{- " + _lit(user[0]) + " + content + " + _lit(user[1]) + " -}}",
            "{%- else -%}{{- " + _lit(first[0]) + " + content + " + _lit(first[1]) + " -}}{%- endif -%}",
            "{%- set ns.seen_user = true -%}",
            "{%- elif message['role'] == 'assistant' -%}",
            "{{- " + _lit(assistant[0]) + " + parts.text + " + _lit(assistant[1]) + " -}}",
            "{%- else -%}",
            "{{- raise_exception('this model was trained with user and assistant turns only, not '"
            " + message['role']) -}}",
            "{%- endif -%}",
            "{%- endfor -%}",
        ]
    )
