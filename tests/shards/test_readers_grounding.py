"""Grounding: RefCOCO (`refs(unc).p` + `instances.json`) and Flickr30k Entities, with boxes that follow the resize.

The fixture image is white with a red object well inside the centre square and a blue one at the far left edge.
Each build draws the stored boxes (and the boxes read back from the `{<x1><y1><x2><y2>}` text) on the stored image
and checks the mean colour inside is the object's; center_crop loses the blue object, whose required box drops
the sample (counted), while keep_ratio and border keep it. The restricted unpickler refuses a pickle that would run
code under `pickle.load` (shown running it there).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from shards.boxes import box_through
from shards.options import ImageOptions, ReaderOptions, ShardOptions
from shards.readers import SourceSpec, get_reader
from shards.readers.safepickle import load_plain
from shards.record import BadRow, Record
from shards.resize import plan_center_crop
from shards.task import process_shard

RED, BLUE = (220, 30, 30), (30, 30, 220)
RED_BOX, BLUE_BOX = (60, 20, 140, 80), (4, 30, 36, 70)  # x1, y1, x2, y2 on a 200 x 100 image
GRID = re.compile(r"\{<(\d+)><(\d+)><(\d+)><(\d+)>\}")


def scene() -> bytes:
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle((RED_BOX[0], RED_BOX[1], RED_BOX[2] - 1, RED_BOX[3] - 1), fill=RED)
    draw.rectangle((BLUE_BOX[0], BLUE_BOX[1], BLUE_BOX[2] - 1, BLUE_BOX[3] - 1), fill=BLUE)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def mean_inside(img: np.ndarray, box: list[float], inset: float = 2.0) -> tuple[float, ...]:
    x1, y1, x2, y2 = (round(box[0] + inset), round(box[1] + inset), round(box[2] - inset), round(box[3] - inset))
    assert x2 > x1 and y2 > y1, box
    return tuple(img[y1:y2, x1:x2].reshape(-1, 3).mean(0))


def near(colour: tuple[float, ...], want: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 25 for a, b in zip(colour, want, strict=True))


def write_refcoco(folder: Path, refs: list | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sentences = [{"tokens": ["red", "box"], "raw": "Red box!", "sent_id": 1, "sent": "red box"}]
    refs = refs or [
        {"sent_ids": [1, 2], "file_name": "COCO_train2014_000000000001_10.jpg", "ann_id": 10, "ref_id": 0,
         "image_id": 1, "split": "train", "category_id": 1,
         "sentences": sentences + [{"tokens": ["the", "red", "one"], "raw": "the red one", "sent_id": 2,
                                    "sent": "the red one"}]},
        {"sent_ids": [3], "file_name": "COCO_train2014_000000000001_11.jpg", "ann_id": 11, "ref_id": 1,
         "image_id": 1, "split": "train", "category_id": 2,
         "sentences": [{"tokens": ["blue"], "raw": "blue thing at left", "sent_id": 3, "sent": "blue thing at left"}]},
        {"sent_ids": [4], "ann_id": 99, "ref_id": 2, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [{"sent_id": 4, "sent": "nothing"}]},
        {"sent_ids": [5], "ann_id": 10, "ref_id": 3, "image_id": 1, "split": "testA", "category_id": 1,
         "sentences": [{"sent_id": 5, "sent": "red"}]},
    ]  # fmt: skip
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))  # the release is a protocol-2 pickle
    instances = {
        "images": [{"file_name": "COCO_train2014_000000000001.jpg", "height": 100, "width": 200, "id": 1}],
        "annotations": [
            {"segmentation": [[60, 20, 140, 20, 140, 80]], "area": 4800.0, "iscrowd": 0, "image_id": 1,
             "bbox": [60.0, 20.0, 80.0, 60.0], "category_id": 1, "id": 10},
            {"segmentation": [[4, 30, 36, 30, 36, 70]], "area": 1280.0, "iscrowd": 0, "image_id": 1,
             "bbox": [4.0, 30.0, 32.0, 40.0], "category_id": 2, "id": 11},
        ],
        "categories": [{"supercategory": "thing", "id": 1, "name": "red"},
                       {"supercategory": "thing", "id": 2, "name": "blue"}],
    }  # fmt: skip
    (folder / "instances.json").write_text(json.dumps(instances))
    return folder / "refs(unc).p"


def read(kind: str, paths: list[Path], task: str, image_root: Path | None = None, **options) -> list:
    spec = SourceSpec(
        "g", kind, [str(p) for p in paths], task, image_root and str(image_root), ReaderOptions(**options)
    )
    return list(get_reader(kind)(spec))


def build(items: list, out: Path, mode: str) -> tuple[dict, dict]:
    opts = ShardOptions(image=ImageOptions(size=50, resize_mode=mode, encode_format="png"))
    process_shard(items, opts, str(out), 0)
    status = {
        r["row"]: (r["status"], r["error_message"]) for r in pq.read_table(out / "00000_status.parquet").to_pylist()
    }
    import webdataset as wds

    samples = {s["__key__"]: s for s in wds.WebDataset([str(out / "00000.tar")], shardshuffle=False).decode("rgb8")}
    return status, samples


def test_refcoco_records(tmp_path: Path) -> None:
    refs = write_refcoco(tmp_path / "refcoco")
    items = read("refcoco-pickle", [refs], "refer", tmp_path / "train2014", split=["train"])
    assert [type(i).__name__ for i in items] == ["Record", "Record", "Record", "BadRow"]
    assert items[0].conversation == [
        {"role": "user", "content": "<image>\ngive me the location of red box"},
        {"role": "assistant", "content": "<box:0>"},
    ]
    assert items[0].meta == {
        "boxes": [[60.0, 20.0, 140.0, 80.0]],
        "box_required": [0],
        "category_id": 1,
        "split": "train",
    }
    assert items[0].image == str(tmp_path / "train2014/COCO_train2014_000000000001.jpg")
    assert items[1].conversation[0]["content"] == "<image>\ngive me the location of the red one"
    assert str(items[3]) == f"{refs}: refs[2] sentence 0: ann_id 99 is not in instances.json"
    identify = read("refcoco-pickle", [refs], "identify", split=["testA"])
    assert [t["content"] for t in identify[0].conversation] == [
        "<image>\nwhat object is in this location <box:0>",
        "red",
    ]
    with pytest.raises(ValueError, match=r"refcoco-pickle makes refer or identify samples, not 'caption'"):
        read("refcoco-pickle", [refs], "caption")


def test_the_restricted_unpickler_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = pickle.dumps([{"sentences": [Payload()]}], protocol=2)
    folder = tmp_path / "refcoco"
    write_refcoco(folder)
    (folder / "refs(unc).p").write_bytes(evil)
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: refused: pickle names posix\.mkdir"):
        read("refcoco-pickle", [folder / "refs(unc).p"], "refer")
    assert not marker.exists()
    pickle.loads(evil)  # what `pickle.load` would have done with it
    assert marker.is_dir()
    plain = [{"a": (1, 2.5, None, True, {3}, frozenset("b"), "é")}]
    assert load_plain(pickle.dumps(plain, protocol=2), "x") == plain
    assert load_plain(pickle.dumps(plain + [b"x"], protocol=5), "x") == plain + [b"x"]
    with pytest.raises(ValueError, match=r"x: refused: pickle names builtins\.eval"):
        load_plain(b"cbuiltins\neval\n(S'1'\ntR.", "x")


@pytest.mark.parametrize("mode", ["center_crop", "keep_ratio", "border"])
def test_boxes_follow_the_image_through_the_resize(tmp_path: Path, mode: str) -> None:
    refs = write_refcoco(tmp_path / "refcoco")
    (tmp_path / "train2014").mkdir()
    (tmp_path / "train2014/COCO_train2014_000000000001.jpg").write_bytes(scene())  # PNG bytes: the name is COCO's
    items = read("refcoco-pickle", [refs], "refer", tmp_path / "train2014", split=["train"])
    status, samples = build(items, tmp_path / "out", mode)
    colours = {0: RED, 1: RED, 2: BLUE}
    kept = [0, 1] if mode == "center_crop" else [0, 1, 2]
    assert sorted(int(k) for k in samples) == kept
    if mode == "center_crop":
        assert status[2] == ("failed_to_process", "box 0 left the crop")  # dropped and counted
    assert status[3] == ("failed_to_read", f"{refs}: refs[2] sentence 0: ann_id 99 is not in instances.json")
    for row in kept:
        s = samples[f"{row:010d}"]
        img, meta = s["png"], s["json"]["meta"]
        height, width = img.shape[:2]
        assert near(mean_inside(img, meta["boxes"][0]), colours[row]), (mode, row, meta["boxes"])
        grid = [int(v) for v in GRID.fullmatch(s["json"]["conversation"][1]["content"]).groups()]
        from_text = [grid[0] * width / 100, grid[1] * height / 100, grid[2] * width / 100, grid[3] * height / 100]
        assert near(mean_inside(img, from_text), colours[row]), (mode, row, from_text)
        assert meta["boxes_dropped"] == 0
    if mode == "center_crop":  # 200x100 -> 100x50, crop x 25..75: red (60..140) -> (5..45), 10..40
        assert samples["0000000000"]["json"]["meta"]["boxes"] == [[5.0, 10.0, 45.0, 40.0]]
        assert samples["0000000000"]["json"]["conversation"][1]["content"] == "{<10><20><90><80>}"


def test_box_through_clips_and_drops() -> None:
    plan = plan_center_crop(200, 100, 50, False)
    assert box_through((60, 20, 140, 80), plan) == (5.0, 10.0, 45.0, 40.0)
    assert box_through((40, 20, 80, 80), plan) == (0.0, 10.0, 15.0, 40.0)  # 15 of 20 px left: kept, clipped
    assert box_through((20, 20, 60, 80), plan) is None  # 5 of 20 px left
    assert box_through(BLUE_BOX, plan) is None


def write_flickr(folder: Path) -> Path:
    (folder / "Sentences").mkdir(parents=True)
    (folder / "Annotations").mkdir()
    (folder / "flickr30k-images").mkdir()
    (folder / "flickr30k-images/1000092795.jpg").write_bytes(scene())
    (folder / "Sentences/1000092795.txt").write_text(
        "[/EN#1/people A red man] stands by [/EN#2/other/clothing a blue thing] in [/EN#3/scene a white room] .\n"
        "[/EN#2/other A blue thing] waits .\n"
        "Nothing boxed in [/EN#3/scene a white room] .\n"
    )
    (folder / "Annotations/1000092795.xml").write_text(
        "<annotation>\n<filename>1000092795.jpg</filename>\n"
        "<size><width>200</width><height>100</height><depth>3</depth></size>\n"
        "<object><name>1</name><bndbox><xmin>60</xmin><ymin>20</ymin><xmax>140</xmax><ymax>80</ymax></bndbox></object>\n"
        "<object><name>2</name><bndbox><xmin>4</xmin><ymin>30</ymin><xmax>36</xmax><ymax>70</ymax></bndbox></object>\n"
        "<object><name>3</name><nobndbox>1</nobndbox><scene>1</scene></object>\n</annotation>\n"
    )
    (folder / "Sentences/2.txt").write_text("[/EN#1/people A man] .\n")
    (folder / "Annotations/2.xml").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>\n'
        "<annotation><size><width>2</width><height>2</height></size></annotation>\n"
    )
    (folder / "Sentences/3.txt").write_text("[/EN#1/people A man] .\n")  # no Annotations/3.xml
    return folder


def test_flickr30k_entities_grounded_captions(tmp_path: Path) -> None:
    folder = write_flickr(tmp_path / "flickr30k")
    items = read("flickr30k-entities", [folder / "Sentences/*.txt"], "grounding", folder / "flickr30k-images")
    first = items[0]
    assert first.conversation == [
        {"role": "user", "content": "<image>\nplease describe this image in details"},
        {
            "role": "assistant",
            "content": "<p>A red man</p> <box:0> stands by <p>a blue thing</p> <box:1> in a white room .",
        },
    ]
    assert first.meta["boxes"] == [[60.0, 20.0, 140.0, 80.0], [4.0, 30.0, 36.0, 70.0]]
    assert first.meta["phrases"][1] == {
        "entity": "2",
        "types": ["other", "clothing"],
        "phrase": "a blue thing",
        "boxes": [1],
    }
    assert first.image == str(folder / "flickr30k-images/1000092795.jpg")
    sentences = folder / "Sentences"
    assert [str(b) for b in items if isinstance(b, BadRow)] == [
        f"{sentences}/1000092795.txt:3: no phrase with a box",
        f"{sentences}/2.txt:1: {folder}/Annotations/2.xml: has a DTD or entity declarations; refused",
        f"{sentences}/3.txt:1: {folder}/Annotations/3.xml: no such file",
    ]
    assert [i.row for i in items] == [0, 1, 2, 3, 4]

    status, samples = build(items, tmp_path / "out", "center_crop")
    text = samples["0000000000"]["json"]["conversation"][1]["content"]
    assert text == "<p>A red man</p> {<10><20><90><80>} stands by a blue thing in a white room ."  # blue box dropped
    assert samples["0000000000"]["json"]["meta"]["boxes"] == [[5.0, 10.0, 45.0, 40.0], None]
    assert samples["0000000000"]["json"]["meta"]["boxes_dropped"] == 1
    assert samples["0000000001"]["json"]["conversation"][1]["content"] == "A blue thing waits ."
    assert status[1] == ("success", None)
    img = samples["0000000000"]["png"]
    assert near(mean_inside(img, samples["0000000000"]["json"]["meta"]["boxes"][0]), RED)
    assert isinstance(items[0], Record)


def test_box_text_is_the_templates_format_box() -> None:
    import random

    from mixer.templates.spec import format_box
    from shards.boxes import box_text

    rng = random.Random(0)
    for _ in range(500):
        w, h = rng.randint(1, 900), rng.randint(1, 900)
        x1, y1 = rng.uniform(-20, w), rng.uniform(-20, h)
        box = (x1, y1, x1 + rng.uniform(0, w), y1 + rng.uniform(0, h))
        assert box_text(box, w, h) == format_box(box, w, h), (box, w, h)
