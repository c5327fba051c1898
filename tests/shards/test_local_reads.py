"""What a build may read from disk: never what a URL column names; an image root's files only, regular, in bounds.

Each build runs the real reader and `process_shard` in this process under an open-spy (every `open`, `os.open`,
`os.stat` and `fsspec.open` is recorded), so "nothing opened" is checked directly. A FIFO would block a plain
`open()` forever, so a guard thread keeps releasing any reader blocked in one: code that opens it fails the test's
assertions instead of hanging it.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import threading
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards.local import LocalReadError, read_local
from shards.options import DownloadOptions, ImageOptions, ShardOptions
from shards.readers import SourceSpec, get_reader
from shards.task import process_shard

GUARD = "fifo-guard"  # the test's own thread that unblocks FIFO readers; the open-spy ignores it
OPTS = ShardOptions(samples_per_shard=100, image=ImageOptions(size=32), download=DownloadOptions(read_timeout=5))


class OpenSpy:
    """Records the resolved path of everything opened or stat-ed while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        for owner, name in ((builtins, "open"), (os, "open"), (os, "stat"), (fsspec, "open")):
            monkeypatch.setattr(owner, name, self._spy(getattr(owner, name)))

    def _spy(self, real):
        def spy(target, *args, **kwargs):
            if isinstance(target, (str, os.PathLike)) and threading.current_thread().name != GUARD:
                text = os.fspath(target)
                self.paths.append(text if "://" in text else os.path.realpath(text))
            return real(target, *args, **kwargs)

        return spy

    def touched(self, *paths: Path) -> list[str]:
        wanted = {os.path.realpath(p) for p in paths} | {p.as_uri() for p in paths}
        return [p for p in self.paths if p in wanted or any(w in p for w in wanted if "://" in w)]


def build(spec: SourceSpec, out: Path) -> dict[int, tuple[str, str | None]]:
    """Read the source and build its one shard in this process; row → (status, error message)."""
    items = list(get_reader(spec.kind)(spec))
    process_shard(items, OPTS, str(out), 0)
    rows = pq.read_table(out / "00000_status.parquet").to_pylist()
    return {r["row"]: (r["status"], r["error_message"]) for r in rows}


def release_fifos(folder: Path, stop: threading.Event) -> None:
    """Until `stop`, keep opening every FIFO under `folder` for writing and closing it, so that a reader blocked in
    one (a regression: nothing should open them) gets EOF and the test fails on its assertions instead of hanging."""
    while not stop.wait(0.5):
        for path in folder.rglob("*"):
            if path.is_fifo():
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:  # ENXIO: nobody is reading it, as it should be
                    pass


@pytest.fixture
def disk(tmp_path: Path, images: dict[str, bytes]):
    """A secret image outside every image root, a FIFO, and an image root with a good image."""
    secret = tmp_path / "data" / "secret" / "secret.png"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(images["img0.jpg"])
    fifo = secret.parent / "pipe.jpg"
    os.mkfifo(fifo)
    root = tmp_path / "data" / "llava" / "images"
    (root / "coco").mkdir(parents=True)
    (root / "coco" / "ok.jpg").write_bytes(images["img1.jpg"])
    stop = threading.Event()
    guard = threading.Thread(target=release_fifos, args=(tmp_path, stop), name=GUARD, daemon=True)
    guard.start()
    yield {"secret": secret, "fifo": fifo, "root": root, "tmp": tmp_path}
    stop.set()
    guard.join()


# --- URL columns: http(s) only, nothing else opened ----------------------------------------------------------------


def hostile_urls(disk: dict[str, Path]) -> list[tuple[str, str]]:
    """(URL column value, the scheme named in the bad row's message)."""
    secret, fifo = disk["secret"], disk["fifo"]
    return [
        (str(secret), "none"),
        (secret.as_uri(), "file"),
        ("s3://bucket/secret.png", "s3"),
        ("gs://bucket/secret.png", "gs"),
        (str(fifo), "none"),
        (fifo.as_uri(), "file"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
    ]


def write_family(kind: str, folder: Path, urls: list[str]) -> tuple[list[str], str]:
    """The native file(s) of a URL family holding `urls`; returns (paths, name of the URL field)."""
    if kind == "laion-parquet":
        rows = [{"SAMPLE_ID": i, "URL": u, "TEXT": f"caption {i}"} for i, u in enumerate(urls)]
        pq.write_table(pa.Table.from_pylist(rows), folder / "laion.parquet")
        return [str(folder / "laion.parquet")], "URL"
    if kind in ("cc3m-tsv", "cc12m-tsv"):
        lines = [f"caption {i}\t{u}" if kind == "cc3m-tsv" else f"{u}\tcaption {i}" for i, u in enumerate(urls)]
        (folder / "cc.tsv").write_text("\n".join(lines) + "\n")
        return [str(folder / "cc.tsv")], "url"
    if kind == "sbu-json":
        doc = {"image_urls": urls, "user_ids": ["u"] * len(urls), "captions": [f"c {i}" for i in range(len(urls))]}
        (folder / "sbu.json").write_text(json.dumps(doc))
        return [str(folder / "sbu.json")], "url"
    if kind == "textvqa-json":
        data = [
            {"image_id": f"i{i}", "question_id": i, "question": "q?", "answers": ["a"] * 10, "set_name": "train"}
            | {"flickr_original_url": u}
            for i, u in enumerate(urls)
        ]
        (folder / "textvqa.json").write_text(json.dumps({"dataset_name": "textvqa", "data": data}))
        return [str(folder / "textvqa.json")], "flickr_original_url"
    assert kind == "ocrvqa-json"
    doc = {f"k{i}": {"imageURL": u, "questions": ["q?"], "answers": ["a"], "split": 1} for i, u in enumerate(urls)}
    (folder / "dataset.json").write_text(json.dumps(doc))
    return [str(folder / "dataset.json")], "imageURL"


URL_FAMILIES = ["laion-parquet", "cc3m-tsv", "cc12m-tsv", "sbu-json", "textvqa-json", "ocrvqa-json"]


@pytest.mark.parametrize("kind", URL_FAMILIES)
def test_url_column_naming_a_local_file_or_object_store_is_a_bad_row_and_nothing_is_opened(kind, disk, monkeypatch):
    hostile = hostile_urls(disk)
    (disk["tmp"] / "in").mkdir()
    paths, field = write_family(kind, disk["tmp"] / "in", [u for u, _ in hostile])
    spec = SourceSpec("src", kind, paths, "caption")
    spy = OpenSpy(monkeypatch)
    status = build(spec, disk["tmp"] / "out")
    assert spy.touched(disk["secret"], disk["fifo"]) == []
    assert "s3://bucket/secret.png" not in spy.paths and "gs://bucket/secret.png" not in spy.paths
    for row, (url, scheme) in enumerate(hostile):
        got_status, message = status[row]
        assert got_status == "failed_to_read", (url, message)
        assert f"{field}: scheme not allowed: {scheme}" in message, (url, message)


# --- image roots: inside the root, regular files only --------------------------------------------------------------


def llava_rows(disk: dict[str, Path]) -> list[tuple[str, str, str | None]]:
    """(image name, expected status, expected error start) for a llava-json source rooted at disk['root']."""
    root, secret = disk["root"], disk["secret"]
    (root / "escape.png").symlink_to(secret)  # a symlink out of the root
    (root / "alias.jpg").symlink_to(root / "coco" / "ok.jpg")  # a symlink that stays inside
    (root / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock.jpg"))
    listener.close()
    return [
        ("coco/ok.jpg", "success", None),
        ("../../secret/secret.png", "failed_to_read", f"outside image_root: {root}/../../secret/secret.png"),
        ("coco/../../../secret/secret.png", "failed_to_read", "outside image_root: "),
        (str(secret), "failed_to_read", f"outside image_root: {secret}"),
        ("escape.png", "failed_to_read", f"outside image_root: {root}/escape.png"),
        ("alias.jpg", "success", None),
        ("zero.jpg", "failed_to_read", f"outside image_root: {root}/zero.jpg"),
        ("pipe.jpg", "failed_to_read", f"not a regular file: {root}/pipe.jpg is a FIFO"),
        ("sock.jpg", "failed_to_read", f"not a regular file: {root}/sock.jpg is a socket"),
        ("coco", "failed_to_read", f"not a regular file: {root}/coco is a directory"),
        (secret.as_uri(), "failed_to_read", "[{i}]: image "),  # a URL scheme other than http(s): the reader refuses
        ("s3://bucket/secret.png", "failed_to_read", "[{i}]: image "),
    ]


def write_llava(path: Path, names: list[str]) -> None:
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]
    chat = [{"id": str(i), "image": name, "conversations": turns} for i, name in enumerate(names)]
    path.write_text(json.dumps(chat))


def test_image_root_escapes_and_special_files_are_bad_rows(disk, monkeypatch):
    rows = llava_rows(disk)
    write_llava(disk["tmp"] / "data" / "llava" / "chat.json", [name for name, _, _ in rows])
    spec = SourceSpec(
        "llava", "llava-json", [str(disk["tmp"] / "data/llava/chat.json")], "conversation", str(disk["root"])
    )
    spy = OpenSpy(monkeypatch)
    status = build(spec, disk["tmp"] / "out")
    for i, (name, want, error) in enumerate(rows):
        got, message = status[i]
        assert got == want, (name, message)
        if error is not None:
            assert message is not None and error.format(i=i) in message, (name, message)
    assert spy.touched(disk["secret"], disk["fifo"], Path("/dev/zero")) == []


def test_allow_outside_root_reads_outside_but_still_only_regular_files(disk):
    rows = llava_rows(disk)
    write_llava(disk["tmp"] / "data" / "llava" / "chat.json", [name for name, _, _ in rows])
    spec = SourceSpec(
        "llava",
        "llava-json",
        [str(disk["tmp"] / "data/llava/chat.json")],
        "conversation",
        str(disk["root"]),
        allow_outside_root=True,
    )
    status = build(spec, disk["tmp"] / "out")
    got = {name: status[i] for i, (name, _, _) in enumerate(rows)}
    for name in ("../../secret/secret.png", "coco/../../../secret/secret.png", str(disk["secret"]), "escape.png"):
        assert got[name] == ("success", None), name
    assert got["zero.jpg"] == ("failed_to_read", f"not a regular file: {disk['root']}/zero.jpg is a character device")
    assert got["pipe.jpg"][1] == f"not a regular file: {disk['root']}/pipe.jpg is a FIFO"
    assert got[disk["secret"].as_uri()][0] == "failed_to_read"  # still no file:// from a row


def test_textvqa_and_ocrvqa_ids_cannot_climb_out_of_the_root(disk):
    root = disk["tmp"] / "data" / "textvqa"
    (root / "train_images").mkdir(parents=True)
    data = [
        {"image_id": "../../secret/secret", "question_id": 1, "question": "q?", "answers": ["a"] * 10}
        | {"set_name": "train", "flickr_original_url": "http://x.example/1.jpg"}
    ]
    (root / "t.json").write_text(json.dumps({"data": data}))
    (disk["secret"].parent / "secret.jpg").write_bytes(disk["secret"].read_bytes())
    status = build(SourceSpec("t", "textvqa-json", [str(root / "t.json")], "ocr", str(root)), disk["tmp"] / "o1")
    assert status[0] == ("failed_to_read", f"outside image_root: {root}/train_images/../../secret/secret.jpg")

    doc = {
        "../secret/secret": {"imageURL": "http://x.example/a.jpg", "questions": ["q?"], "answers": ["a"], "split": 1}
    }
    (root / "dataset.json").write_text(json.dumps(doc))
    status = build(SourceSpec("o", "ocrvqa-json", [str(root / "dataset.json")], "ocr", str(root)), disk["tmp"] / "o2")
    assert status[0] == ("failed_to_read", f"outside image_root: {root}/../secret/secret.jpg")


# --- read_local: size cap before reading, bounded in time ----------------------------------------------------------


def test_size_cap_is_checked_before_any_byte_is_read(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 1000)
    reads: list[int] = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(LocalReadError, match=r"^too large: > 999 bytes$"):
        read_local(str(big), str(tmp_path), 999)
    assert reads == []
    assert read_local(str(big), str(tmp_path), 1000) == b"x" * 1000 and reads


def test_a_stuck_read_times_out(tmp_path, monkeypatch):
    """A read that never returns (a hung NFS or FUSE mount, simulated) fails its row after read_timeout."""
    from shards.local import LocalImage, read_image_file

    image = tmp_path / "a.jpg"
    image.write_bytes(b"jpeg")
    release = threading.Event()
    real_read = os.read

    def stuck(fd, n):
        if threading.current_thread().name == "tinymix-local-read":
            release.wait()
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", stuck)
    try:
        with pytest.raises(LocalReadError, match=r"^timeout: read$"):
            read_image_file(LocalImage(str(image), str(tmp_path)), 100, timeout=0.2)
    finally:
        release.set()
    assert read_image_file(LocalImage(str(image), str(tmp_path)), 100, timeout=5) == b"jpeg"
