"""llava-json on a LLaVA-1.5 mix665k / ShareGPT4V-style list: placeholder normalisation, text-only rows, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

from shards.options import ReaderOptions
from shards.readers import SourceSpec, get_reader
from shards.record import BadRow, Record


def turn(frm: str, value: str) -> dict:
    return {"from": frm, "value": value}


ROWS = [
    # 0: LLaVA-Instruct-150K style, <image> at the end of the first human turn, two rounds.
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            turn("human", "What are the colors of the bus in the image?\n<image>"),
            turn("gpt", "The bus in the image is white and red."),
            turn("human", "What feature can be seen on the back of the bus?"),
            turn("gpt", "The back of the bus features an advertisement."),
        ],
    },
    # 1: mix665k style, <image> at the start.
    {
        "id": "VG_100K_2/1",
        "image": "vg/VG_100K_2/1.jpg",
        "conversations": [turn("human", "<image>\nProvide a one-sentence caption."), turn("gpt", "A street.")],
    },
    # 2: text-only (ShareGPT rows in mix665k): no image key.
    {"id": "i6IyJda_0", "conversations": [turn("human", "Write a haiku."), turn("gpt", "Leaves fall.")]},
    # 3: image but no placeholder.
    {"id": "bad-1", "image": "gqa/images/1.jpg", "conversations": [turn("human", "Q?"), turn("gpt", "A.")]},
    # 4: placeholder but no image.
    {"id": "bad-2", "conversations": [turn("human", "<image>\nQ?"), turn("gpt", "A.")]},
    # 5: unknown speaker.
    {"id": "bad-3", "image": "a.jpg", "conversations": [turn("human", "<image>"), turn("bot", "A.")]},
    # 6: not an object at all.
    "stray string",
    # 7: opens with gpt.
    {"id": "bad-4", "conversations": [turn("gpt", "Hi."), turn("human", "Hello")]},
    # 8: two placeholders.
    {"id": "bad-5", "image": "a.jpg", "conversations": [turn("human", "<image> <image>"), turn("gpt", "A.")]},
    # 9: ShareGPT4V style with an extra key and only a placeholder in the first turn.
    {
        "id": "sa_1",
        "image": "sam/images/sa_1.jpg",
        "model": "gpt4v",
        "conversations": [turn("human", "<image>"), turn("gpt", "A detailed description.")],
    },
]


def read(tmp_path: Path, rows: list, image_root: str | None = "/data/llava", **options) -> tuple[Path, list]:
    path = tmp_path / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(rows, indent=1))
    spec = SourceSpec("llava", "llava-json", [str(path)], "conversation", image_root, ReaderOptions(**options))
    return path, list(get_reader("llava-json")(spec))


def test_llava_records(tmp_path: Path) -> None:
    path, items = read(tmp_path, ROWS)
    assert len(items) == len(ROWS)
    common = {"source": "llava", "task": "conversation", "file": str(path)}
    assert items[0] == Record(
        row=0,
        conversation=[
            {"role": "user", "content": "<image>\nWhat are the colors of the bus in the image?"},
            {"role": "assistant", "content": "The bus in the image is white and red."},
            {"role": "user", "content": "What feature can be seen on the back of the bus?"},
            {"role": "assistant", "content": "The back of the bus features an advertisement."},
        ],
        image="/data/llava/coco/train2017/000000033471.jpg",
        image_root="/data/llava",
        ids={"id": "000000033471"},
        meta={"image_at": "end"},
        **common,
    )
    assert items[1] == Record(
        row=1,
        conversation=[
            {"role": "user", "content": "<image>\nProvide a one-sentence caption."},
            {"role": "assistant", "content": "A street."},
        ],
        image="/data/llava/vg/VG_100K_2/1.jpg",
        image_root="/data/llava",
        ids={"id": "VG_100K_2/1"},
        meta={"image_at": "start"},
        **common,
    )
    assert items[2] == Record(
        row=2,
        conversation=[{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "Leaves fall."}],
        image=None,
        ids={"id": "i6IyJda_0"},
        meta={},
        **common,
    )
    assert items[9].conversation[0] == {"role": "user", "content": "<image>"}
    assert items[9].meta == {"model": "gpt4v", "image_at": "start"}


def test_llava_bad_rows(tmp_path: Path) -> None:
    path, items = read(tmp_path, ROWS)
    bad = [(b.row, b.error) for b in items if isinstance(b, BadRow)]
    assert bad == [
        (3, "[3]: 'image' given: expected one <image> in the first human turn, found 0 in all turns (0 in the first)"),
        (4, "[4]: no 'image' but 1 <image> placeholder(s)"),
        (5, "[5]: conversations[1].from is 'bot', expected 'human' or 'gpt'"),
        (6, "[6]: expected an object, found str"),
        (7, "[7]: conversations[0] is from gpt; a conversation must open with a human turn"),
        (8, "[8]: 'image' given: expected one <image> in the first human turn, found 2 in all turns (2 in the first)"),
    ]
    assert all(b.file == str(path) and b.source == "llava" for b in items if isinstance(b, BadRow))


def test_llava_default_image_root_is_the_json_folder(tmp_path: Path) -> None:
    _, items = read(tmp_path, ROWS[1:2], image_root=None)
    assert items[0].image == str(tmp_path / "vg/VG_100K_2/1.jpg")


def test_llava_max_samples_counts_bad_rows(tmp_path: Path) -> None:
    _, items = read(tmp_path, ROWS, max_samples=5)
    assert [type(i).__name__ for i in items] == ["Record", "Record", "Record", "BadRow", "BadRow"]
    assert [i.row for i in items] == [0, 1, 2, 3, 4]
