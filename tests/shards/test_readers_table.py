"""The reader table and the behaviour every reader shares: kinds, path expansion, row numbering, split, limits, URLs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.options import ReaderOptions
from shards.readers import READERS, SourceSpec, count_rows, files, get_reader
from shards.readers.files import expand_paths
from shards.record import BadRow, Record


def spec(kind: str, paths: list, **options) -> SourceSpec:
    return SourceSpec("src", kind, [str(p) for p in paths], "caption", None, ReaderOptions(**options))


def read(kind: str, paths: list, **options) -> list[Record | BadRow]:
    return list(get_reader(kind)(spec(kind, paths, **options)))


def test_table_has_exactly_the_known_kinds() -> None:
    assert sorted(READERS) == sorted(
        [
            "laion-parquet",
            "cc3m-tsv",
            "cc12m-tsv",
            "sbu-json",
            "llava-json",
            "textvqa-json",
            "docvqa-json",
            "ocrvqa-json",
            "chartqa-json",
            "hf-parquet",
            "sharegpt-json",
            "alpaca-json",
            "unnatural-jsonl",
            "vqav2-json",
            "okvqa-json",
            "aokvqa-json",
            "gqa-json",
            "coco-captions-json",
            "textcaps-json",
            "ccsbu-align-json",
            "refcoco-pickle",
            "flickr30k-entities",
        ]
    )
    assert get_reader("cc3m-tsv") is READERS["cc3m-tsv"]


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown source kind 'coyo-parquet'; known kinds: laion-parquet, cc3m-tsv"):
        get_reader("coyo-parquet")


def write_tsv(path: Path, n: int, start: int, bad_at: int | None = None) -> Path:
    lines = [f"caption {start + i}\thttp://x/{start + i}.jpg" for i in range(n)]
    if bad_at is not None:
        lines[bad_at] = "broken line"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_are_numbered_across_files_in_path_order(tmp_path: Path) -> None:
    b = write_tsv(tmp_path / "part-b.tsv", 3, 100, bad_at=1)
    a = write_tsv(tmp_path / "part-a.tsv", 2, 0)
    items = read("cc3m-tsv", [tmp_path / "part-*.tsv", a])  # the glob and a plain path overlap: read once
    assert [(i.row, i.file) for i in items] == [(0, str(a)), (1, str(a)), (2, str(b)), (3, str(b)), (4, str(b))]
    assert [i.image for i in items if isinstance(i, Record)] == [
        "http://x/0.jpg",
        "http://x/1.jpg",
        "http://x/100.jpg",
        "http://x/102.jpg",
    ]
    assert (items[3].row, items[3].line, items[3].file) == (3, 2, str(b))
    limited = read("cc3m-tsv", [tmp_path / "part-*.tsv"], max_samples=3)
    assert [(i.row, i.file) for i in limited] == [(0, str(a)), (1, str(a)), (2, str(b))]


def test_missing_files_and_empty_globs_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv: no such file"):
        read("cc3m-tsv", [tmp_path / "nope.tsv"])
    with pytest.raises(FileNotFoundError, match=r"\*\.parquet: no file matches this pattern"):
        read("laion-parquet", [tmp_path / "*.parquet"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        expand_paths([str(tmp_path)])  # a folder is not a file


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("cc3m-tsv", {"split": ["train"]}, "kind cc3m-tsv has no splits to filter"),
        ("cc12m-tsv", {"columns": {"url": "URL"}}, r"kind cc12m-tsv cannot rename \['url'\] \(renamable: none\)"),
        ("laion-parquet", {"columns": {"image": "URL"}}, r"cannot rename \['image'\] \(renamable: caption, url\)"),
        ("llava-json", {"captions_path": "/x.txt"}, "captions_path only applies to sbu-json"),
    ],
)
def test_options_a_kind_does_not_take_are_errors(tmp_path: Path, kind: str, options: dict, message: str) -> None:
    path = write_tsv(tmp_path / "a.tsv", 1, 0)
    with pytest.raises(ValueError, match=message):
        read(kind, [path], **options)


def test_fsspec_urls_memory_and_file(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/readers-test/cc/1.tsv", b"a dog\thttp://x/1.jpg\n")
    fs.pipe("/readers-test/cc/0.tsv", b"a cat\thttp://x/0.jpg\n")
    try:
        items = read("cc3m-tsv", ["memory:///readers-test/cc/*.tsv"])
        assert [(i.file, i.image) for i in items] == [
            ("memory:///readers-test/cc/0.tsv", "http://x/0.jpg"),
            ("memory:///readers-test/cc/1.tsv", "http://x/1.jpg"),
        ]
    finally:
        fs.rm("/readers-test", recursive=True)
    path = write_tsv(tmp_path / "c.tsv", 2, 0)
    assert [i.file for i in read("cc3m-tsv", [f"file://{path}"])] == [str(path)] * 2


def test_count_rows(tmp_path: Path) -> None:
    for name, n in (("a.parquet", 3), ("b.parquet", 4)):
        pq.write_table(pa.table({"URL": [f"http://x/{i}" for i in range(n)], "TEXT": ["t"] * n}), tmp_path / name)
    assert count_rows(spec("laion-parquet", [tmp_path / "*.parquet"])) == 7
    assert count_rows(spec("laion-parquet", [tmp_path / "*.parquet"], max_samples=5)) == 5
    assert len(read("laion-parquet", [tmp_path / "*.parquet"])) == 7
    assert count_rows(spec("cc3m-tsv", [tmp_path / "a.parquet"])) is None
    with pytest.raises(ValueError, match="unknown source kind"):
        count_rows(spec("nope", []))


def test_s3_source_through_a_local_s3_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": endpoint}})
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("data")
        rows = [
            {
                "id": "1",
                "image": "coco/1.jpg",
                "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}],
            }
        ]
        fs.pipe("data/llava/mix.json", json.dumps(rows).encode())
        fs.pipe("data/cc3m/b.tsv", b"two\thttp://x/2.jpg\n")
        fs.pipe("data/cc3m/a.tsv", b"one\thttp://x/1.jpg\nbad\n")
        llava = list(
            get_reader("llava-json")(SourceSpec("l", "llava-json", ["s3://data/llava/mix.json"], "conversation"))
        )
        assert [(r.image, r.file) for r in llava] == [("s3://data/llava/coco/1.jpg", "s3://data/llava/mix.json")]
        cc = read("cc3m-tsv", ["s3://data/cc3m/*.tsv"])
        assert [(i.row, i.file, type(i).__name__) for i in cc] == [
            (0, "s3://data/cc3m/a.tsv", "Record"),
            (1, "s3://data/cc3m/a.tsv", "BadRow"),
            (2, "s3://data/cc3m/b.tsv", "Record"),
        ]
        with pytest.raises(FileNotFoundError, match="s3://data/cc3m/missing.tsv: no such file"):
            read("cc3m-tsv", ["s3://data/cc3m/missing.tsv"])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bc", b"\t", b"\n", b"\r\n", b"\r", b"\xe9"]), max_size=30))
def test_text_lines_match_a_plain_split_whatever_the_chunking(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    lines = data.split(b"\n")
    if lines[-1] == b"":  # a final newline ends the last line, it does not start another
        lines.pop()
    expected = [line.rstrip(b"\r") for line in lines]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.txt")
        with open(path, "wb") as f:
            f.write(data)
        saved = files.LINE_BATCH_BYTES
        files.LINE_BATCH_BYTES = 3
        try:
            got = list(files.text_lines(path))
        finally:
            files.LINE_BATCH_BYTES = saved
    assert got == list(enumerate(expected, 1))
