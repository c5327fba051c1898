"""Chat templates with label masking: the table `TEMPLATES`, `get_template`, `encode`, `FastEncoder`.

Shipped templates (see `spec.py`): `plain` (image, caption, eos), `tinygptv`, `minigptv2` (task tags, boxes via
`format_box`), `llava_v1`, `phi`, `llama`, and `hf` (the tokenizer's own `chat_template`). `FastEncoder` is `encode`
without its whole-text check, for samples the length index has already checked; `to_stored` / `from_stored` turn an
`Encoded` into the compact form the length index stores and back (the loader's path when the index holds tokens).
"""

from __future__ import annotations

from mixer.templates.encode import (
    IGNORE_INDEX,
    Encoded,
    TokenizationMismatch,
    encode,
    render,
)
from mixer.templates.fast import FastEncoder
from mixer.templates.spec import IMAGE_TOKEN, TEMPLATES, Template, format_box, get_template, template_texts
from mixer.templates.stored import from_stored, to_stored

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN",
    "TEMPLATES",
    "Encoded",
    "FastEncoder",
    "Template",
    "TokenizationMismatch",
    "encode",
    "format_box",
    "from_stored",
    "get_template",
    "render",
    "template_texts",
    "to_stored",
]
