"""hf-parquet on LLaVA-OneVision- and Cauldron-style files: embedded images, both conversation shapes, renamed columns.

Fixtures are written with pyarrow in the 🤗 `datasets` layout: an Image feature is a `struct<bytes: binary, path:
string>` column (a list of them for `images`), several row groups per file. The build runs the real reader and
`process_shard`; shards are read back with webdataset.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import shards.task
from shards.options import ImageOptions, ReaderOptions, ShardOptions
from shards.readers import SourceSpec, count_rows, get_reader
from shards.record import BadRow, Record
from shards.task import process_shard

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
CAULDRON_TURN = pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())])


def png(colour: tuple[int, int, int], size: tuple[int, int] = (80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


RED, BLUE, GREEN = png((220, 20, 20)), png((20, 20, 220)), png((20, 200, 20))


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": f, "value": v} for f, v in pairs]


def onevision(path: Path) -> Path:
    """LLaVA-OneVision-Data's layout: id, image (null for text-only rows), conversations, data_source."""
    rows = [
        ("ov-0", {"bytes": RED, "path": "0.png"}, turns(("human", "<image>\nWhat colour?"), ("gpt", "Red.")), "a"),
        ("ov-1", None, turns(("human", "Say hi."), ("gpt", "Hi."), ("human", "Again."), ("gpt", "Hi!")), "text"),
        ("ov-2", {"bytes": BLUE, "path": None}, turns(("human", "Colour?\n<image>"), ("gpt", "Blue.")), "a"),
        ("ov-3", {"bytes": None, "path": "lost.png"}, turns(("human", "<image>"), ("gpt", "x")), "a"),
        ("ov-4", {"bytes": RED, "path": "4.png"}, turns(("human", "<image><image>"), ("gpt", "x")), "a"),
        ("ov-5", {"bytes": b"not an image", "path": "5.png"}, turns(("human", "<image>"), ("gpt", "x")), "a"),
        ("ov-6", None, turns(("human", "Q"), ("gpt", "A"), ("gpt", "B")), "text"),
    ]
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "image": pa.array([r[1] for r in rows], IMAGE),
            "conversations": pa.array([r[2] for r in rows], pa.list_(TURN)),
            "data_source": [r[3] for r in rows],
        }
    )
    pq.write_table(table, path, row_group_size=2)  # four row groups
    return path


def cauldron(path: Path) -> Path:
    """The Cauldron's layout: images (a list), texts [{user, assistant, source}], no placeholder in the text."""
    rows = [
        ([{"bytes": GREEN, "path": None}], [("What colour is it?", "Green.", "vqav2"), ("Sure?", "Yes.", "vqav2")]),
        ([{"bytes": RED, "path": None}, {"bytes": BLUE, "path": None}], [("Compare.", "Red, blue.", "nlvr2")]),
        ([{"bytes": BLUE, "path": None}], [("Q?", "  ", "ai2d")]),
    ]
    table = pa.table(
        {
            "images": pa.array([r[0] for r in rows], pa.list_(IMAGE)),
            "texts": pa.array(
                [[{"user": u, "assistant": a, "source": s} for u, a, s in r[1]] for r in rows], pa.list_(CAULDRON_TURN)
            ),
        }
    )
    pq.write_table(table, path, row_group_size=1)
    return path


def spec(paths: list[Path], **options) -> SourceSpec:
    return SourceSpec("hf", "hf-parquet", [str(p) for p in paths], "conversation", None, ReaderOptions(**options))


def read(paths: list[Path], **options) -> list[Record | BadRow]:
    return list(get_reader("hf-parquet")(spec(paths, **options)))


def test_onevision_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = onevision(tmp_path / "ov-00000-of-00001.parquet")

    def whole_file(*args, **kwargs):
        raise AssertionError("a whole file was loaded")

    monkeypatch.setattr(pq.ParquetFile, "read", whole_file)
    monkeypatch.setattr(pq, "read_table", whole_file)
    items = read([path])
    assert [type(i).__name__ for i in items] == ["Record", "Record", "Record", "BadRow", "BadRow", "Record", "BadRow"]
    first = items[0]
    assert first == Record(
        row=0,
        source="hf",
        task="conversation",
        conversation=[{"role": "user", "content": "<image>\nWhat colour?"}, {"role": "assistant", "content": "Red."}],
        image="0.png",
        ids={"id": "ov-0"},
        meta={"data_source": "a", "image_at": "start"},
        file=str(path),
        image_root=None,
        image_bytes=RED,
    )
    assert "image_bytes" not in first.to_json() and first.to_json()["image"] == "0.png"
    text_only = items[1]
    assert (text_only.image, text_only.image_bytes, text_only.meta) == (None, None, {"data_source": "text"})
    assert [t["content"] for t in text_only.conversation] == ["Say hi.", "Hi.", "Again.", "Hi!"]
    moved = items[2]
    assert (moved.image, moved.image_bytes, moved.meta["image_at"]) == ("image", BLUE, "end")
    assert moved.conversation[0]["content"] == "<image>\nColour?"
    assert [str(b) for b in items if isinstance(b, BadRow)] == [
        f"{path}: parquet row 3: image has no embedded bytes (path 'lost.png'); only embedded images are read",
        f"{path}: parquet row 4: one image: expected one <image> in the first user turn or none, found 2 in all turns",
        f"{path}: parquet row 6: conversations[2] is a second assistant turn in a row; "
        "turns must alternate, user first",
    ]
    assert count_rows(spec([path])) == 7


def test_cauldron_rows_and_multi_image_is_a_counted_bad_row(tmp_path: Path) -> None:
    path = cauldron(tmp_path / "vqav2-train.parquet")
    items = read([path])
    assert items[0].conversation == [
        {"role": "user", "content": "<image>\nWhat colour is it?"},
        {"role": "assistant", "content": "Green."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert (items[0].image, items[0].image_bytes) == ("images[0]", GREEN)
    assert items[0].meta == {"text_sources": ["vqav2", "vqav2"], "image_at": "added"}
    assert [str(b) for b in items[1:]] == [
        f"{path}: parquet row 1: multi-image samples not supported yet (2 images)",
        f"{path}: parquet row 2: texts[0] has an empty answer",
    ]


def test_columns_mapping_for_other_layouts(tmp_path: Path) -> None:
    path = tmp_path / "custom.parquet"
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    table = pa.table(
        {
            "jpg": pa.array([RED], pa.binary()),  # plain binary image column
            "messages": pa.array(
                [[{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "Red."}]], messages
            ),
            "uid": ["u1"],
        }
    )
    pq.write_table(table, path)
    with pytest.raises(
        ValueError,
        match=r"custom\.parquet: no conversation column 'conversations' or 'texts' \(columns: jpg, messages, uid\)",
    ):
        read([path])
    (rec,) = read([path], columns={"image": "jpg", "conversations": "messages", "id": "uid"})
    assert (rec.image, rec.image_bytes, rec.ids, rec.meta) == ("jpg", RED, {"id": "u1"}, {"image_at": "added"})
    assert rec.conversation[0]["content"] == "<image>\nDescribe."
    with pytest.raises(ValueError, match=r"cannot rename \['url'\]"):
        read([path], columns={"url": "jpg"})
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"broken\.parquet: not a readable Parquet file"):
        read([tmp_path / "broken.parquet"])


def test_build_embeds_images_without_fetching_and_webdataset_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import webdataset as wds

    ov = onevision(tmp_path / "a-ov.parquet")
    ca = cauldron(tmp_path / "b-cauldron.parquet")
    fetched: list = []
    real = shards.task.Downloader.fetch_many

    def spy(self, items):
        items = list(items)
        fetched.extend(items)
        return real(self, items)

    monkeypatch.setattr(shards.task.Downloader, "fetch_many", spy)
    items = read([ov, ca])
    opts = ShardOptions(samples_per_shard=100, image=ImageOptions(size=32, resize_mode="center_crop"))
    process_shard(items, opts, str(tmp_path / "out"), 0)
    assert fetched == []  # nothing went to the downloader: no URL, no local read

    status = {r["row"]: r for r in pq.read_table(tmp_path / "out/00000_status.parquet").to_pylist()}
    assert {r: s["status"] for r, s in status.items()} == {
        0: "success",
        1: "success",
        2: "success",
        3: "failed_to_read",
        4: "failed_to_read",
        5: "failed_to_process",
        6: "failed_to_read",
        7: "success",
        8: "failed_to_read",
        9: "failed_to_read",
    }
    assert status[8]["error_message"] == f"{ca}: parquet row 1: multi-image samples not supported yet (2 images)"
    assert status[5]["error_message"] == "not an image"
    samples = list(wds.WebDataset([str(tmp_path / "out/00000.tar")], shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == ["0000000000", "0000000001", "0000000002", "0000000007"]
    colours = {
        s["__key__"]: tuple(int(c) for c in s["jpg"].reshape(-1, 3).mean(0).round()) for s in samples if "jpg" in s
    }
    assert set(colours) == {"0000000000", "0000000002", "0000000007"}  # the text-only row stores no image
    for key, want in (("0000000000", (220, 20, 20)), ("0000000002", (20, 20, 220)), ("0000000007", (20, 200, 20))):
        assert all(abs(a - b) <= 3 for a, b in zip(colours[key], want, strict=True)), (key, colours[key])
    stored = {s["__key__"]: s["json"] for s in samples}
    assert stored["0000000007"]["conversation"][1]["content"] == "Green."
    assert stored["0000000001"]["image"] is None and "image_bytes" not in stored["0000000001"]
    assert (stored["0000000000"]["width"], stored["0000000000"]["orig_width"]) == (32, 80)
    assert json.loads(json.dumps(stored["0000000002"]))["meta"]["image_at"] == "end"


def test_ray_build_reuses_shards_and_rebuilds_when_an_embedded_image_changes(tmp_path: Path, ray_local) -> None:
    from shards.build import build_shards

    path = onevision(tmp_path / "ov.parquet")
    opts = ShardOptions(samples_per_shard=3, image=ImageOptions(size=32))
    out = str(tmp_path / "out")
    first = build_shards([spec([path])], opts, out, progress=False)["hf"]
    assert (first.shards, first.input_rows, dict(first.by_status)) == (
        3,
        7,
        {"success": 3, "failed_to_read": 3, "failed_to_process": 1},
    )
    again = build_shards([spec([path])], opts, out, progress=False)["hf"]
    assert (again.skipped_shards, again.rebuilt) == (3, {})
    table = pq.read_table(path)  # same rows, one embedded image changed: only its shard is rebuilt
    images = table.column("image").to_pylist()
    images[2] = {"bytes": GREEN, "path": None}
    pq.write_table(table.set_column(1, "image", pa.array(images, IMAGE)), path, row_group_size=2)
    changed = build_shards([spec([path])], opts, out, progress=False)["hf"]
    assert changed.skipped_shards == 2 and [s for shards in changed.rebuilt.values() for s in shards] == [0]
