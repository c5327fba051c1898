"""Chat templates with label masking: the table `TEMPLATES`, `get_template`, `encode` / `token_length`, `FastEncoder`.

Shipped templates (see `spec.py`): `plain` (image, caption, eos), `tinygptv`, `minigptv2` (task tags, boxes via
`format_box`), `llava_v1`, `phi`, `llama`, and `hf` (the tokenizer's own `chat_template`). `FastEncoder` is `encode`
without its whole-text check, for samples the length index has already checked (the loader's path).
"""

from __future__ import annotations

from mixer.templates.encode import (
    IGNORE_INDEX,
    Encoded,
    TokenizationMismatch,
    encode,
    render,
    token_length,
)
from mixer.templates.fast import FastEncoder
from mixer.templates.spec import IMAGE_TOKEN, TEMPLATES, Template, format_box, get_template, template_texts

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
    "get_template",
    "render",
    "template_texts",
    "token_length",
]
