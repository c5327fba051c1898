"""Chat templates with label masking: the table `TEMPLATES`, `get_template`, and `encode` / `token_length`.

Shipped templates (see `spec.py`): `plain` (image, caption, eos), `tinygptv`, `minigptv2` (task tags, boxes via
`format_box`), `llava_v1`, `phi`, `llama`, and `hf` (the tokenizer's own `chat_template`).
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
from mixer.templates.spec import IMAGE_TOKEN, TEMPLATES, Template, format_box, get_template, template_texts

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN",
    "TEMPLATES",
    "Encoded",
    "Template",
    "TokenizationMismatch",
    "encode",
    "format_box",
    "get_template",
    "render",
    "template_texts",
    "token_length",
]
