"""Caption readers on fixtures in each family's native layout: LAION Parquet, CC3M/CC12M TSV, SBU JSON and legacy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards.options import ReaderOptions
from shards.readers import SourceSpec, count_rows, get_reader
from shards.record import BadRow, Record


def read(kind: str, paths: list[Path | str], **options) -> list[Record | BadRow]:
    spec = SourceSpec("src", kind, [str(p) for p in paths], "caption", None, ReaderOptions(**options))
    return list(get_reader(kind)(spec))


def caption(row: int, url: str, text: str, file: Path, ids=None, meta=None) -> Record:
    return Record(
        row=row,
        source="src",
        task="caption",
        conversation=[{"role": "user", "content": "<image>"}, {"role": "assistant", "content": text}],
        image=url,
        ids=ids or {},
        meta=meta or {},
        file=str(file),
    )


def bad(items) -> list[tuple[int, int | None, str]]:
    return [(b.row, b.line, b.error) for b in items if isinstance(b, BadRow)]


# --- LAION Parquet -------------------------------------------------------------------------------------------------


def write_laion(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    schema = pa.schema(
        [
            ("SAMPLE_ID", pa.int64()),
            ("URL", pa.string()),
            ("TEXT", pa.string()),
            ("HEIGHT", pa.int32()),
            ("WIDTH", pa.int32()),
            ("LICENSE", pa.string()),
            ("NSFW", pa.string()),
            ("similarity", pa.float64()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def laion_row(i: int, url: str | None, text: str | None, similarity: float = 0.31) -> dict:
    return {
        "SAMPLE_ID": 1000 + i,
        "URL": url,
        "TEXT": text,
        "HEIGHT": 240,
        "WIDTH": 320,
        "LICENSE": "?",
        "NSFW": "UNLIKELY",
        "similarity": similarity,
    }


def test_laion_records_meta_ids_and_bad_rows(tmp_path: Path) -> None:
    path = write_laion(
        tmp_path / "part-00000.parquet",
        [
            laion_row(0, "http://a.example/0.jpg", "  A red bus  "),
            laion_row(1, "http://a.example/1.jpg", None),  # null caption
            laion_row(2, None, "no url"),
            laion_row(3, "http://a.example/3.jpg", "   "),  # blank caption
            laion_row(4, "http://a.example/4.jpg", "a cat", similarity=math.nan),
        ],
    )
    items = read("laion-parquet", [path])
    assert len(items) == 5
    meta = {"HEIGHT": 240, "WIDTH": 320, "LICENSE": "?", "NSFW": "UNLIKELY", "similarity": 0.31}
    assert items[0] == caption(0, "http://a.example/0.jpg", "A red bus", path, {"SAMPLE_ID": 1000}, meta)
    assert items[4] == caption(
        4, "http://a.example/4.jpg", "a cat", path, {"SAMPLE_ID": 1004}, {**meta, "similarity": None}
    )
    assert bad(items) == [
        (1, None, "parquet row 1: missing field 'TEXT'"),
        (2, None, "parquet row 2: missing field 'URL'"),
        (3, None, "parquet row 3: empty 'TEXT'"),
    ]
    assert all(b.file == str(path) for b in items if isinstance(b, BadRow))
    assert count_rows(SourceSpec("src", "laion-parquet", [str(path)], "caption")) == 5


def test_laion_renamed_columns_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "coco.parquet"
    pq.write_table(pa.table({"url": ["http://x/1.jpg"], "caption": ["two dogs"], "key": ["000001"]}), path)
    items = read("laion-parquet", [path], columns={"url": "url", "caption": "caption"})
    assert items == [caption(0, "http://x/1.jpg", "two dogs", path, {}, {"key": "000001"})]
    with pytest.raises(ValueError, match=r"coco\.parquet: no url column 'URL' \(columns: url, caption, key\)"):
        read("laion-parquet", [path])


def test_laion_not_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(ValueError, match="broken.parquet: not a readable Parquet file"):
        read("laion-parquet", [path])


# --- CC3M / CC12M TSV ----------------------------------------------------------------------------------------------


def test_cc3m_caption_then_url_with_quirks(tmp_path: Path) -> None:
    path = tmp_path / "Train_GCC-training.tsv"
    path.write_bytes(
        b'the "best" view of the city\thttp://cc.example/1.jpg\r\n'  # quotes, CRLF
        b"only one field\n"
        b"\n"
        b"three\tfields\there\n"
        b"caf\xe9 latin-1 line\thttp://cc.example/5.jpg\n"  # not UTF-8
        b"\thttp://cc.example/6.jpg\n"  # empty caption
        b"a sign says \xe2\x80\x9cstop\xe2\x80\x9d\thttp://cc.example/7.jpg"  # no final newline
    )
    items = read("cc3m-tsv", [path])
    assert len(items) == 7
    assert items[0] == caption(0, "http://cc.example/1.jpg", 'the "best" view of the city', path)
    assert items[6] == caption(6, "http://cc.example/7.jpg", "a sign says \u201cstop\u201d", path)
    assert bad(items) == [
        (1, 2, "expected 2 tab-separated fields (caption\\turl), found 1"),
        (2, 3, "expected 2 tab-separated fields (caption\\turl), found 1"),
        (3, 4, "expected 2 tab-separated fields (caption\\turl), found 3"),
        (4, 5, "line is not UTF-8 (invalid continuation byte at byte 3)"),
        (5, 6, "empty 'caption'"),
    ]
    assert str(items[1]) == f"{path}:2: expected 2 tab-separated fields (caption\\turl), found 1"


def test_cc12m_is_url_then_caption(tmp_path: Path) -> None:
    path = tmp_path / "cc12m.tsv"
    path.write_text("http://cc12.example/a.jpg\t<PERSON> at the beach\nnot a url line\n")
    items = read("cc12m-tsv", [path])
    assert items[0] == caption(0, "http://cc12.example/a.jpg", "<PERSON> at the beach", path)
    assert bad(items) == [(1, 2, "expected 2 tab-separated fields (url\\tcaption), found 1")]
    # The same file read as CC3M swaps the fields: the caption stands where the URL belongs, and is no URL.
    assert bad(read("cc3m-tsv", [path]))[0] == (
        0,
        1,
        "url: scheme not allowed: none (a local path; only http and https URLs are fetched)",
    )


def test_gzipped_tsv_is_decompressed(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "cc3m.tsv.gz"
    path.write_bytes(gzip.compress(b"a dog\thttp://x/1.jpg\n"))
    assert read("cc3m-tsv", [path]) == [caption(0, "http://x/1.jpg", "a dog", path)]


# --- SBU -----------------------------------------------------------------------------------------------------------


def write_sbu(path: Path, urls: list, users: list, captions: list) -> Path:
    path.write_text(json.dumps({"image_urls": urls, "user_ids": users, "captions": captions}))
    return path


def test_sbu_parallel_lists(tmp_path: Path) -> None:
    path = write_sbu(
        tmp_path / "sbu-captions-all.json",
        ["http://static.flickr.com/1/a.jpg", "http://static.flickr.com/2/b.jpg", 7, "http://static.flickr.com/4/d.jpg"],
        ["48889109@N00", "48889109@N00", "1@N00", "2@N00"],
        ["Man sits on a bench", "", "a number url", "Sunset over the lake"],
    )
    items = read("sbu-json", [path])
    assert items[0] == caption(
        0, "http://static.flickr.com/1/a.jpg", "Man sits on a bench", path, {"user_id": "48889109@N00"}
    )
    assert items[3] == caption(
        3, "http://static.flickr.com/4/d.jpg", "Sunset over the lake", path, {"user_id": "2@N00"}
    )
    assert bad(items) == [(1, None, "index 1: empty 'caption'"), (2, None, "index 2: field 'url' is int, expected str")]


def test_sbu_lists_of_different_length(tmp_path: Path) -> None:
    path = write_sbu(
        tmp_path / "sbu.json", ["http://x/1.jpg", "http://x/2.jpg", "http://x/3.jpg"], ["u1", "u2", "u3"], ["one"]
    )
    items = read("sbu-json", [path])
    assert items[0] == caption(0, "http://x/1.jpg", "one", path, {"user_id": "u1"})
    assert bad(items) == [
        (1, None, "index 1: lists differ in length: captions end before index 1"),
        (2, None, "index 2: lists differ in length: captions end before index 2"),
    ]


def test_sbu_missing_list_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "sbu.json"
    path.write_text(json.dumps({"image_urls": ["http://x/1.jpg"], "captions": ["one"]}))
    with pytest.raises(ValueError, match=r"sbu\.json: expected a list at 'user_ids', found nothing"):
        read("sbu-json", [path])


def test_sbu_legacy_line_aligned_files(tmp_path: Path) -> None:
    urls = tmp_path / "SBU_captioned_photo_dataset_urls.txt"
    caps = tmp_path / "SBU_captioned_photo_dataset_captions.txt"
    urls.write_text(
        "http://static.flickr.com/1/a.jpg\nhttp://static.flickr.com/2/b.jpg\n\nhttp://static.flickr.com/4/d.jpg\n"
    )
    caps.write_text("Man sits on a bench\n \nA cloud\nSunset over the lake\nan orphan caption\n")
    items = read("sbu-json", [urls], captions_path=str(caps))
    assert items[0] == caption(0, "http://static.flickr.com/1/a.jpg", "Man sits on a bench", urls)
    assert items[3] == caption(3, "http://static.flickr.com/4/d.jpg", "Sunset over the lake", urls)
    assert bad(items) == [
        (1, 2, "empty 'caption'"),
        (2, 3, "empty 'url'"),
        (4, 5, f"{caps} has a caption on line 5 but no URL"),
    ]
    assert len(items) == 5


def test_sbu_legacy_needs_one_url_file(tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt", "caps.txt"):
        (tmp_path / name).write_text("x\n")
    with pytest.raises(ValueError, match="needs exactly one URL file, found 2"):
        read("sbu-json", [tmp_path / "a.txt", tmp_path / "b.txt"], captions_path=str(tmp_path / "caps.txt"))
