"""Boxes that follow their image through the resize: grounding records name boxes, the build renders them as text.

A grounding reader keeps its boxes in `meta['boxes']` (`[x1, y1, x2, y2]` in the source image's pixels) and writes
`<box:i>` (or `<box:i,j>` for one phrase with several boxes) where the text of a box goes; `meta['box_required']`
lists the boxes without which the sample means nothing (the answer of `[refer]`, the question of `[identify]`).
Only the build knows the stored image, so it calls `place_boxes` with the resize plan: each box is scaled, cropped
and offset exactly as the pixels were (`shards.resize`), then written in MiniGPT-v2's `{<x1><y1><x2><y2>}` on a
0–100 grid of the stored image. A box keeping less than `MIN_VISIBLE` of its area inside the crop is dropped:
`<p>phrase</p> <box:i>` then reads `phrase`, and a required box dropped drops the sample (`BoxLeftCrop`, counted
as `failed_to_process`). The stored record's `meta['boxes']` are the boxes in stored pixels (null where dropped),
and `meta['boxes_dropped']` counts them.
"""

from __future__ import annotations

import re
from typing import Any

from shards.resize import ResizePlan

MIN_VISIBLE = 0.5  # of a box's area, inside the crop: less and what it framed is mostly gone
BOX_REF = re.compile(r"<box:(\d+(?:,\d+)*)>")
PHRASE_BOX = re.compile(r"<p>([^<]*)</p> <box:(\d+(?:,\d+)*)>")
DELIM = "<delim>"  # MiniGPT-v2's separator between several boxes of one phrase

Box = tuple[float, float, float, float]


class BoxLeftCrop(ValueError):
    """A box the sample needs fell (mostly) outside the stored image."""


def box_through(box: Box, plan: ResizePlan) -> Box | None:
    """`box` in the pixels of the image `plan` produces, clipped to it; None when under `MIN_VISIBLE` of it is left."""
    sx, sy = plan.scaled[0] / plan.source[0], plan.scaled[1] / plan.source[1]
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    if plan.crop is not None:
        x1, x2 = x1 - plan.crop[0], x2 - plan.crop[0]
        y1, y2 = y1 - plan.crop[1], y2 - plan.crop[1]
    if plan.canvas is not None:
        x1, x2 = x1 + plan.offset[0], x2 + plan.offset[0]
        y1, y2 = y1 + plan.offset[1], y2 + plan.offset[1]
    width, height = plan.final
    area = (x2 - x1) * (y2 - y1)
    cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
    if area <= 0 or cx2 <= cx1 or cy2 <= cy1 or (cx2 - cx1) * (cy2 - cy1) < MIN_VISIBLE * area:
        return None
    return (cx1, cy1, cx2, cy2)


def box_text(box: Box, width: int, height: int) -> str:
    """A box in pixels as MiniGPT-v2's `{<x1><y1><x2><y2>}` on a 0–100 grid (`mixer.templates.format_box`'s rule)."""

    def grid(v: float, size: int) -> int:
        return min(100, max(0, round(v * 100 / size)))

    x1, y1, x2, y2 = box
    return f"{{<{grid(x1, width)}><{grid(y1, height)}><{grid(x2, width)}><{grid(y2, height)}>}}"


def place_boxes(record: dict[str, Any], plan: ResizePlan) -> dict[str, Any]:
    """The stored record: boxes carried through `plan`, written into the text; `BoxLeftCrop` if a needed one is lost."""
    meta = dict(record["meta"])
    boxes = [box_through(tuple(b), plan) for b in meta["boxes"]]
    for i in meta.get("box_required", ()):
        if boxes[i] is None:
            raise BoxLeftCrop(f"box {i} left the crop")
    width, height = plan.final

    def texts(ids: str) -> list[str]:
        return [box_text(boxes[int(i)], width, height) for i in ids.split(",") if boxes[int(i)] is not None]

    def phrase(m: re.Match[str]) -> str:
        kept = texts(m.group(2))
        return f"<p>{m.group(1)}</p> {DELIM.join(kept)}" if kept else m.group(1)

    conversation = []
    for turn in record["conversation"]:
        content = PHRASE_BOX.sub(phrase, turn["content"])
        content = BOX_REF.sub(lambda m: DELIM.join(texts(m.group(1))), content)
        conversation.append({**turn, "content": content})
    meta["boxes"] = [None if b is None else [round(v, 2) for v in b] for b in boxes]
    meta["boxes_dropped"] = sum(b is None for b in boxes)
    return {**record, "conversation": conversation, "meta": meta}
