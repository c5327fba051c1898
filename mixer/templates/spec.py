"""The shipped chat templates as data: how a conversation's turns, system prompt, image and eos are laid out as text.

A template is a handful of format strings. Each may use `{content}` (the turn's text), `{system}` (the template's
system prompt), `{bos}` / `{eos}` (the tokenizer's own bos / eos token text, so one template serves Llama's `</s>`
and Phi-2's `<|endoftext|>`). `mixer.templates.encode` lays the turns out as

    header + first_user(turn 0) + assistant(turn 1) + user(turn 2) + assistant(turn 3) + …

where the header and user parts are masked and each assistant part carries loss. The text in front of `{content}`
in `assistant` (the space after `ASSISTANT:`) belongs to the answer: byte-level BPE and sentencepiece both glue a
leading space to the next word, so cutting the text anywhere else would merge tokens across the label boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"  # the same string as mixer.batch.IMAGE_TOKEN; kept here so templates import without torch

LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# TinyLLaVA's phi template says "user" where LLaVA v1 says "human".
PHI_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# LLaVA's conv_llava_llama_2 system prompt.
LLAMA_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

# MiniGPT-v2 task identifiers by record task. `ocr` is asked as VQA (MiniGPT-v2 trains OCR-VQA and TextVQA with
# `[vqa]`); `conversation` and any other task get no tag, as MiniGPT-v2 does for LLaVA conversations.
MINIGPTV2_TAGS: tuple[tuple[str, str], ...] = (
    ("vqa", "[vqa]"),
    ("ocr", "[vqa]"),
    ("caption", "[caption]"),
    ("grounding", "[grounding]"),
    ("refer", "[refer]"),
    ("identify", "[identify]"),
    ("detection", "[detection]"),
)


@dataclass(frozen=True)
class Template:
    """One chat template. Format fields accept `{content}`, `{system}`, `{bos}` and `{eos}`."""

    name: str
    system: str = ""
    """System prompt, substituted for `{system}`."""
    header: str = ""
    """Masked text before the first turn (e.g. `{bos}{system} `)."""
    user: str = "{content}"
    """A user turn, up to and including the assistant's role marker (masked)."""
    first_user: str | None = None
    """The first user turn when it differs (Llama-2 puts the system block inside it); None: same as `user`."""
    assistant: str = " {content}{eos}"
    """An assistant turn with its end marker; all of it carries loss."""
    image: str = IMAGE_TOKEN
    """Text an image becomes; the `IMAGE_TOKEN` inside it is where the image's token run goes."""
    image_sep: str = "\n"
    """Between a turn's image text and its words."""
    user_text: bool = True
    """False: user turns contribute only their images (caption pre-training has no instruction, as LLaVA `plain`)."""
    task_tags: tuple[tuple[str, str], ...] = ()
    """Record task → tag put in front of the first user turn's words (MiniGPT-v2)."""
    chat_template: bool = False
    """Render with the tokenizer's own `chat_template` instead of the format fields above."""

    def task_tag(self, task: str | None) -> str:
        """The tag for a record's task, or "" when the template has none for it."""
        return dict(self.task_tags).get(task or "", "")


_LLAVA = Template(
    name="llava_v1",
    system=LLAVA_SYSTEM,
    header="{bos}{system} ",
    user="USER: {content} ASSISTANT:",
    # LLaVA's conv_vicuna_v1 ends a turn with the literal sep2 "</s>", whatever the tokenizer.
    assistant=" {content}</s>",
)

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(name="plain", user="{content}", assistant="{content}{eos}", image_sep="", user_text=False),
        Template(
            name="tinygptv",
            user="###Human: {content}###Assistant:",
            image=f"<Img>{IMAGE_TOKEN}</Img>",
            image_sep=" ",
        ),
        Template(
            name="minigptv2",
            header="{bos}",
            user="[INST] {content} [/INST]",
            image=f"<Img>{IMAGE_TOKEN}</Img>",
            image_sep=" ",
            task_tags=MINIGPTV2_TAGS,
        ),
        _LLAVA,
        Template(name="phi", system=PHI_SYSTEM, header="{system} ", user=_LLAVA.user, assistant=" {content}{eos}"),
        Template(
            name="llama",
            system=LLAMA_SYSTEM,
            first_user="{bos}[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]",
            user="{bos}[INST] {content} [/INST]",
            assistant=" {content} {eos}",
        ),
        Template(name="hf", chat_template=True),
    )
}


def get_template(name: str) -> Template:
    """The shipped template called `name`; unknown names raise with the known ones listed."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}") from None


def template_texts() -> list[str]:
    """The literal text of every shipped template (prompts, role markers), for training a tokenizer that knows it."""
    out = []
    for t in TEMPLATES.values():
        for s in (t.system, t.header, t.user, t.first_user or "", t.assistant, t.image):
            s = s.format(content="", system="", bos="", eos="").strip()
            if s:
                out.append(s)
        out.extend(tag for _, tag in t.task_tags)
    return out


def format_box(box: tuple[float, float, float, float], width: int, height: int) -> str:
    """A pixel box `(x1, y1, x2, y2)` as MiniGPT-v2's `{<x1><y1><x2><y2>}` on a 0–100 grid (rounded, clamped)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"format_box: image size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise ValueError(f"format_box: box {tuple(box)} has x2 < x1 or y2 < y1")

    def grid(v: float, size: int) -> int:
        return min(100, max(0, round(v * 100 / size)))

    return f"{{<{grid(x1, width)}><{grid(y1, height)}><{grid(x2, width)}><{grid(y2, height)}>}}"
