"""JSON files that break off or have the wrong layout, and memory that stays flat however large the input is."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from shards.options import ReaderOptions
from shards.readers import SourceSpec, get_reader
from shards.record import BadRow, Record


def read(kind: str, paths: list, image_root: str | None = "/img", **options) -> list[Record | BadRow]:
    spec = SourceSpec("src", kind, [str(p) for p in paths], "vqa", image_root, ReaderOptions(**options))
    return list(get_reader(kind)(spec))


def textvqa_item(i: int) -> dict:
    return {"question": f"q{i}?", "image_id": f"img{i}", "question_id": i, "answers": ["yes"] * 10, "set_name": "train"}


def llava_item(i: int) -> dict:
    return {
        "id": str(i),
        "image": f"coco/train2017/{i:012d}.jpg",
        "conversations": [
            {"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
            {"from": "gpt", "value": "A cat."},
        ],
    }


def test_truncated_data_list_keeps_rows_read_then_one_bad_row(tmp_path: Path) -> None:
    text = json.dumps({"dataset_name": "textvqa", "data": [textvqa_item(i) for i in range(4)]})
    cut = text.index('{"question": "q3?"') + 20  # inside the fourth item
    path = tmp_path / "TextVQA_0.5.1_train.json"
    path.write_text(text[:cut])
    items = read("textvqa-json", [path])
    assert [type(i).__name__ for i in items] == ["Record", "Record", "Record", "BadRow"]
    assert [r.ids["question_id"] for r in items[:3]] == [0, 1, 2]
    last = items[3]
    assert (last.row, last.file, last.line) == (3, str(path), None)
    assert last.error.startswith(
        f"data[3:]: JSON breaks off after data[2] (3 items read; parser stopped by byte {cut}): "
    )


def test_truncated_file_does_not_stop_the_next_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    text = json.dumps([llava_item(0), llava_item(1)])
    a.write_text(text[: text.index('"id": "1"')])
    b.write_text(json.dumps([llava_item(2)]))
    items = read("llava-json", [b, a])
    assert [(i.row, i.file, type(i).__name__) for i in items] == [
        (0, str(a), "Record"),
        (1, str(a), "BadRow"),
        (2, str(b), "Record"),
    ]
    assert items[1].error.startswith("[1:]: JSON breaks off after [0] (1 items read;")


def test_list_that_breaks_before_its_first_item(tmp_path: Path) -> None:
    path = tmp_path / "llava.json"
    path.write_text('[{"id": "0", "conversa')
    items = read("llava-json", [path])
    assert len(items) == 1 and isinstance(items[0], BadRow)
    assert items[0].error.startswith("[0:]: JSON breaks off at the start of the top level (0 items read;")


def test_corrupt_middle_is_a_bad_remainder(tmp_path: Path) -> None:
    path = tmp_path / "llava.json"
    good = json.dumps(llava_item(0))
    path.write_text(f"[{good}, {{oops}}, {good}]")
    items = read("llava-json", [path])
    assert [type(i).__name__ for i in items] == ["Record", "BadRow"]
    assert "JSON breaks off after [0] (1 items read" in items[1].error


def test_invalid_utf8_inside_the_list_is_a_bad_remainder(tmp_path: Path) -> None:
    path = tmp_path / "llava.json"
    path.write_bytes(b"[" + json.dumps(llava_item(0)).encode() + b', {"id": "caf\xe9"}]')
    items = read("llava-json", [path])
    assert [type(i).__name__ for i in items] == ["Record", "BadRow"]
    assert items[1].error.endswith("): lexical error: invalid bytes in UTF8 string.")


def test_ocrvqa_dict_that_breaks_off(tmp_path: Path) -> None:
    item = {"imageURL": "http://x/1.jpg", "questions": ["Q?"], "answers": ["A"], "split": 1}
    text = json.dumps({"111": item, "222": item, "333": item})
    path = tmp_path / "dataset.json"
    path.write_text(text[: text.index('"333"') + 10])
    items = read("ocrvqa-json", [path])
    assert [type(i).__name__ for i in items] == ["Record", "Record", "BadRow"]
    assert items[2].error.startswith("the top level from item 2: JSON breaks off after key '222' (2 items read;")


def test_sbu_that_breaks_off_inside_the_captions(tmp_path: Path) -> None:
    text = json.dumps(
        {"image_urls": ["http://x/1", "http://x/2"], "user_ids": ["u1", "u2"], "captions": ["one", "two"]}
    )
    path = tmp_path / "sbu.json"
    path.write_text(text[: text.index('"two"') + 2])
    items = read("sbu-json", [path])
    assert [type(i).__name__ for i in items] == ["Record", "BadRow"]
    assert items[1].error.startswith("captions[1:]: JSON breaks off after captions[0]")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"dataset_name": "textvqa", "da', r"expected a list at 'data', found nothing \(not valid JSON: "),
        ("this is not json", r"expected a list at 'data', found nothing \(not valid JSON: "),
        ("", r"expected a list at 'data', found nothing \(not valid JSON: "),
        ('{"data": "none"}', r"expected a list at 'data', found a string$"),
    ],
)
def test_a_file_unreadable_at_the_top_level_raises(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"^{path}: {message}"):
        read("textvqa-json", [path])


def test_an_empty_list_is_zero_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text('{"dataset_name": "textvqa", "data": []}')
    assert read("textvqa-json", [path]) == []


# --- streaming: memory stays far below the input size ---------------------------------------------------------------
# Rows are long (~4 KB) so that a 40 MB input stays quick to read (tracemalloc slows Python several times) on a
# shared machine; what a reader holds is a chunk or a row, so a peak far below the input size shows it never holds
# the file, whatever its row count.

LONG = "a fairly long description of a photo taken somewhere interesting, with many details. " * 50
ROWS = 10_000


def peak_while_reading(kind: str, path: Path) -> tuple[int, int]:
    """(input rows seen, peak traced bytes) reading a source without keeping its records."""
    spec = SourceSpec("big", kind, [str(path)], "caption", "/img")
    tracemalloc.start()
    try:
        seen = sum(1 for _ in get_reader(kind)(spec))
        return seen, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_tsv_streams(tmp_path: Path) -> None:
    path = tmp_path / "cc12m.tsv"
    with path.open("w") as f:
        f.writelines(f"http://cc12m.example/images/{i:09d}.jpg\t{LONG}{i}\n" for i in range(ROWS))
    size = path.stat().st_size
    seen, peak = peak_while_reading("cc12m-tsv", path)
    assert seen == ROWS
    assert size > 40_000_000
    assert peak < size / 8, f"peak {peak} bytes for a {size}-byte file"


def test_large_json_list_streams(tmp_path: Path) -> None:
    path = tmp_path / "llava.json"
    with path.open("w") as f:
        f.write("[")
        f.write(",".join(json.dumps({**llava_item(i), "model": LONG}) for i in range(ROWS)))
        f.write("]")
    size = path.stat().st_size
    seen, peak = peak_while_reading("llava-json", path)
    assert seen == ROWS
    assert size > 40_000_000
    assert peak < size / 8, f"peak {peak} bytes for a {size}-byte file"
