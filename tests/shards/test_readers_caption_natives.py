"""COCO Captions, TextCaps and MiniGPT-4's cc_sbu_align: records, bad rows, and a cc_sbu_align build read back.

Fixtures follow the released files: COCO's `images` list before `annotations` (captions with trailing spaces and
newlines, as in the data), TextCaps' `data` list (test rows without `caption_str`), `filter_cap.json` with string
image ids and an `image/` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from shards.options import ImageOptions, ReaderOptions, ShardOptions
from shards.readers import SourceSpec, get_reader
from shards.record import BadRow, Record
from shards.task import process_shard


def read(kind: str, path: Path, image_root: str | None = None, **options) -> list[Record | BadRow]:
    spec = SourceSpec("s", kind, [str(path)], "caption", image_root, ReaderOptions(**options))
    return list(get_reader(kind)(spec))


def test_coco_captions(tmp_path: Path) -> None:
    path = tmp_path / "annotations/captions_val2017.json"
    path.parent.mkdir()
    data = {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [{"id": 3, "name": "Attribution-NonCommercial-NoDerivs License"}],
        "images": [
            {"license": 3, "file_name": "000000179765.jpg", "height": 480, "width": 640, "id": 179765},
            {"license": 3, "file_name": "000000190236.jpg", "height": 480, "width": 640, "id": 190236},
        ],
        "annotations": [
            {"image_id": 179765, "id": 38, "caption": "A black Honda motorcycle parked in front of a garage."},
            {"image_id": 179765, "id": 182, "caption": "A Honda motorcycle parked in a grass driveway\n"},
            {"image_id": 190236, "id": 401, "caption": "An office cubicle with four different types of computers. "},
            {"image_id": 5, "id": 402, "caption": "An orphan caption."},
            {"image_id": 190236, "id": 403, "caption": ""},
        ],
    }
    path.write_text(json.dumps(data))
    items = read("coco-captions-json", path, "/coco/val2017")
    assert [(r.image, r.caption, r.ids) for r in items[:3]] == [
        (
            "/coco/val2017/000000179765.jpg",
            "A black Honda motorcycle parked in front of a garage.",
            {"id": 38, "image_id": 179765},
        ),
        (
            "/coco/val2017/000000179765.jpg",
            "A Honda motorcycle parked in a grass driveway",
            {"id": 182, "image_id": 179765},
        ),
        (
            "/coco/val2017/000000190236.jpg",
            "An office cubicle with four different types of computers.",
            {"id": 401, "image_id": 190236},
        ),
    ]
    assert items[0].conversation[0] == {"role": "user", "content": "<image>"}
    assert [str(b) for b in items[3:]] == [
        f"{path}: annotations[3]: image_id 5 is not in the file's 'images' list",
        f"{path}: annotations[4]: empty 'caption'",
    ]


def test_textcaps(tmp_path: Path) -> None:
    path = tmp_path / "TextCaps_0.1_train.json"
    row = {
        "image_id": "011e7e629fb9ae7b",
        "image_classes": ["Vehicle", "Car"],
        "flickr_original_url": "https://farm5.staticflickr.com/4/5_o.jpg",
        "flickr_300k_url": "https://c5.staticflickr.com/4/5_z.jpg",
        "image_width": 1024,
        "image_height": 683,
        "set_name": "train",
        "image_name": "011e7e629fb9ae7b",
        "image_path": "train/011e7e629fb9ae7b.jpg",
        "caption_id": 7,
        "caption_str": "A white car with the number 15 on its door.",
        "caption_tokens": ["<s>", "a", "white", "car"],
        "reference_strs": ["A white car with the number 15 on its door.", "Car 15."],
        "reference_tokens": [["<s>", "a"]],
    }
    test_row = {k: v for k, v in row.items() if not k.startswith(("caption", "reference"))} | {"set_name": "test"}
    path.write_text(json.dumps({"dataset_type": "train", "dataset_name": "textcaps", "data": [row, test_row]}))
    items = read("textcaps-json", path, "/textvqa")
    assert (items[0].image, items[0].caption, items[0].image_root) == (
        "/textvqa/train_images/011e7e629fb9ae7b.jpg",
        "A white car with the number 15 on its door.",
        "/textvqa",
    )
    assert items[0].meta["reference_strs"][1] == "Car 15."
    assert str(items[1]) == f"{path}: data[1]: missing field 'caption_str'"
    by_url = read("textcaps-json", path, split=["train"])
    assert [(r.image, r.image_root) for r in by_url] == [("https://farm5.staticflickr.com/4/5_o.jpg", None)]


def test_ccsbu_align_build(tmp_path: Path, images) -> None:
    import webdataset as wds

    folder = tmp_path / "cc_sbu_align"
    (folder / "image").mkdir(parents=True)
    (folder / "image/2.jpg").write_bytes(images["img1.jpg"])
    path = folder / "filter_cap.json"
    caption = "The image shows a man fishing on a lawn next to a river with a bridge in the background."
    rows = [{"image_id": "2", "caption": caption}, {"image_id": "3", "caption": "No such image."}, {"image_id": "4"}]
    path.write_text(json.dumps({"annotations": rows}))
    items = read("ccsbu-align-json", path)
    assert items[0].conversation == [
        {"role": "user", "content": "<image>\nDescribe this image in detail."},
        {"role": "assistant", "content": caption},
    ]
    assert (items[0].image, items[0].image_root) == (str(folder / "image/2.jpg"), str(folder))
    process_shard(items, ShardOptions(image=ImageOptions(size=32)), str(tmp_path / "out"), 0)
    status = [
        (r["status"], r["error_message"]) for r in pq.read_table(tmp_path / "out/00000_status.parquet").to_pylist()
    ]
    assert status[0] == ("success", None)
    assert (
        status[1][0] == "failed_to_read" and status[1][1].startswith("missing file") and "image/3.jpg" in status[1][1]
    )
    assert status[2] == ("failed_to_read", f"{path}: annotations[2]: missing field 'caption'")
    (sample,) = wds.WebDataset([str(tmp_path / "out/00000.tar")], shardshuffle=False).decode("pil")
    assert sample["jpg"].size == (32, 32) and sample["txt"] == caption
