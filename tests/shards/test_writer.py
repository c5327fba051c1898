"""Shard writer: deterministic tars, Parquet shards, status and stats, atomic publish and resume markers."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid

import duckdb
import fsspec
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from shards import fs
from shards.record import sample_key
from shards.status import STATUS_SCHEMA, StatusRow, normalise_error
from shards.writer import Sample, ShardWriter, complete_shards, encode_json

ERRORS = ["HTTP Error 404: Not Found", "http 404", "read timed out after 10s", "image too small: 12x10", None]


def image_bytes(i: int, ext: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16 + i, 12 + 2 * i), (37 * i % 256, 90, 200)).save(buf, {"jpg": "JPEG", "png": "PNG"}[ext])
    return buf.getvalue()


def make_inputs(n: int, first_row: int = 0) -> list[tuple[Sample | None, StatusRow]]:
    """Every 5th row fails; every 4th stored sample is text-only; captions on even rows; jpg and png alternate."""
    out: list[tuple[Sample | None, StatusRow]] = []
    for row in range(first_row, first_row + n):
        key = sample_key(row)
        if row % 5 == 4:
            err = ERRORS[row % len(ERRORS)]
            out.append((None, StatusRow(key, row, "failed_to_download", err or "http 404", url=f"http://h/{row}.jpg")))
            continue
        text_only = row % 4 == 3
        ext = None if text_only else ("jpg" if row % 2 else "png")
        caption = f"a caption for row {row} é" if row % 2 == 0 else None
        turns = [{"role": "user", "content": "<image>\nDescribe ü."}, {"role": "assistant", "content": f"answer {row}"}]
        record = {"source": "demo", "task": "caption" if caption else "vqa", "conversation": turns, "meta": {"r": row}}
        image = None if text_only else image_bytes(row, ext)
        if image:
            record.update(width=16 + row, height=12 + 2 * row, sha256="ab" * 32)
        out.append((Sample(key, record, image, ext, caption), StatusRow(key, row, "success", nbytes=len(image or b""))))
    return out


def write_shard(out_dir: str, shard: int, inputs, fmt: str = "webdataset", **kw) -> dict:
    with ShardWriter(out_dir, shard, fmt, **kw) as w:
        for sample, status in inputs:
            if sample is not None:
                w.add(sample)
            w.add_status(status)
        return w.finish({"download": 1.5, "write": 0.25})


def test_same_input_gives_byte_identical_shard_files(tmp_path):
    inputs = make_inputs(23)
    for name in ("a", "b"):
        write_shard(str(tmp_path / name), 7, inputs)
    for f in ("00007.tar", "00007_index.parquet", "00007_status.parquet"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_tar_members_are_contiguous_sorted_and_fixed(tmp_path):
    inputs = make_inputs(12)
    write_shard(str(tmp_path), 0, inputs)
    data = (tmp_path / "00000.tar").read_bytes()
    assert data[257:265] == b"ustar\x0000"  # POSIX USTAR magic + version in the first header
    with tarfile.open(tmp_path / "00000.tar") as tar:
        members = tar.getmembers()
        expected = []
        for sample, _ in inputs:
            if sample is None:
                continue
            exts = ["json"] + ([sample.image_ext] if sample.image else []) + (["txt"] if sample.caption else [])
            expected += [f"{sample.key}.{e}" for e in sorted(exts)]
            assert tar.extractfile(f"{sample.key}.json").read() == encode_json(sample.record, "t")
            if sample.image:
                assert tar.extractfile(f"{sample.key}.{sample.image_ext}").read() == sample.image
            if sample.caption:
                assert tar.extractfile(f"{sample.key}.txt").read().decode() == sample.caption
    assert [m.name for m in members] == expected
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in members} == {
        (0, 0, 0, "", "", 0o644, tarfile.REGTYPE)
    }


def test_tar_bytes_are_what_tarfile_writes_for_the_same_members(tmp_path):
    """The sink writes headers and padding itself; the whole file must equal `TarFile.addfile` + `close` output."""
    inputs = make_inputs(15)
    write_shard(str(tmp_path), 0, inputs)
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample, _ in inputs:
            if sample is None:
                continue
            members = {"json": encode_json(sample.record, "t")}
            if sample.image:
                members[sample.image_ext] = sample.image
            if sample.caption:
                members["txt"] = sample.caption.encode()
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size, info.mtime, info.mode = len(members[ext]), 0, 0o644
                info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
                tar.addfile(info, io.BytesIO(members[ext]))
    written = (tmp_path / "00000.tar").read_bytes()
    assert len(written) % tarfile.RECORDSIZE == 0
    assert written == reference.getvalue()


def test_webdataset_decodes_our_tar(tmp_path):
    inputs = make_inputs(10)
    write_shard(str(tmp_path), 0, inputs)
    ds = wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False).decode("pil")
    got = {s["__key__"]: s for s in ds}
    stored = {s.key: s for s, _ in inputs if s is not None}
    assert sorted(got) == sorted(stored)
    for key, sample in stored.items():
        assert got[key]["json"] == sample.record
        assert got[key].get("txt") == sample.caption
        if sample.image:
            assert got[key][sample.image_ext].size == Image.open(io.BytesIO(sample.image)).size
        else:
            assert not {"jpg", "png"} & set(got[key])


def test_parquet_shard_has_fixed_row_groups_and_reads_in_duckdb(tmp_path):
    inputs = make_inputs(9)
    stored = [s for s, _ in inputs if s is not None]
    write_shard(str(tmp_path), 3, inputs, fmt="parquet", row_group_size=3)
    path = str(tmp_path / "00003.parquet")
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [3, 3, 2]  # 8 stored (row 4 failed)
    rows = duckdb.sql(f"select key, image, image_ext, json, caption, width from '{path}' order by key").fetchall()
    assert [r[0] for r in rows] == [s.key for s in stored]
    for (_, image, ext, js, caption, width), s in zip(rows, stored, strict=True):
        assert (image, ext, json.loads(js), caption) == (s.image, s.image_ext, s.record, s.caption)
        assert width == s.record.get("width")


def test_status_rows_and_stats_add_up(tmp_path):
    inputs = make_inputs(25)
    stats = write_shard(str(tmp_path), 1, inputs)
    status = str(tmp_path / "00001_status.parquet")
    counts = dict(duckdb.sql(f"select status, count(*) from '{status}' group by status").fetchall())
    assert counts == {"success": 20, "failed_to_download": 5}
    assert pq.read_schema(status).equals(STATUS_SCHEMA)
    assert pq.read_table(status).column("row").to_pylist() == list(range(25))
    on_disk = json.loads((tmp_path / "00001_stats.json").read_text())
    assert on_disk == stats
    assert stats["input_rows"] == 25 == sum(stats["counts"].values())
    assert stats["stored"] == stats["counts"]["success"] == 20
    # rows 4, 9, 14, 19, 24 fail with ERRORS[row % 5] = ERRORS[4] (None → "http 404") for all of them
    assert stats["errors"] == {"http 404": 5}
    assert stats["timings"] == {"download": 1.5, "write": 0.25}


def test_error_histogram_groups_normalised_messages(tmp_path):
    rows = [StatusRow(sample_key(i), i, "failed_to_download", ERRORS[i % 4]) for i in range(8)]
    rows.append(StatusRow(sample_key(8), 8, "failed_to_process", "image too small: 30x8"))
    with ShardWriter(str(tmp_path), 0) as w:
        for r in rows:
            w.add_status(r)
        stats = w.finish({})
    assert stats["errors"] == {"http 404": 4, "image too small: NxN": 3, "timeout": 2}
    assert stats["counts"] == {
        "success": 0,
        "failed_to_read": 0,
        "failed_to_download": 8,
        "failed_to_process": 1,
        "excluded_benchmark": 0,
    }


@pytest.mark.parametrize(
    ("message", "bucket"),
    [
        ("HTTP Error 404: Not Found", "http 404"),
        ("http 404", "http 404"),
        ("404 Client Error: Not Found for url: http://x/y.jpg", "http 404"),
        ("bad status code 503", "http 503"),
        ("HTTPConnectionPool: Read timed out. (read timeout=10)", "timeout"),
        ("connect timeout", "timeout"),
        ("file not found: /data/coco/train2017/000001.jpg", "file not found: <path>"),
        ("unsupported scheme in ftp://host/a.jpg", "unsupported scheme in <url>"),
        ("aspect ratio 4.5 > 3.0\ntraceback...", "aspect ratio N > N"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_normalise_error(message, bucket):
    assert normalise_error(message) == bucket


def test_zero_row_shard_has_typed_status_and_empty_data(tmp_path):
    stats = write_shard(str(tmp_path), 0, [])
    assert stats["input_rows"] == stats["stored"] == 0
    status = pq.read_table(tmp_path / "00000_status.parquet")
    assert status.num_rows == 0 and status.schema.equals(STATUS_SCHEMA)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert tar.getmembers() == []
    assert 0 in complete_shards(str(tmp_path))


def test_nothing_final_before_finish_and_no_temp_after(tmp_path):
    out = tmp_path / "src"
    with ShardWriter(str(out), 2) as w:
        for sample, status in make_inputs(8):
            if sample is not None:
                w.add(sample)
            w.add_status(status)
        assert not out.exists() or list(out.iterdir()) == []
        build_dir = w._tmp
        assert os.path.isdir(build_dir)
        w.finish({})
    assert not os.path.exists(build_dir)
    assert sorted(os.listdir(out)) == ["00002.tar", "00002_index.parquet", "00002_stats.json", "00002_status.parquet"]


def test_status_is_published_last(tmp_path, monkeypatch):
    seen = []
    real_publish = fs.publish

    def spy(local, final):
        seen.append((os.path.basename(final), 4 in complete_shards(str(tmp_path))))
        real_publish(local, final)

    monkeypatch.setattr(fs, "publish", spy)
    write_shard(str(tmp_path), 4, make_inputs(6), fmt="parquet")
    assert [name for name, _ in seen][-1] == "00004_status.parquet"
    assert sorted(name for name, _ in seen) == sorted(os.listdir(tmp_path))
    assert not any(complete for _, complete in seen)
    assert 4 in complete_shards(str(tmp_path))


def test_killed_before_status_resumes_to_identical_shard(tmp_path, monkeypatch):
    inputs = make_inputs(15)
    write_shard(str(tmp_path / "ref"), 0, inputs)
    out = tmp_path / "run"
    real_publish = fs.publish

    def die_on_status(local, final):
        if final.endswith("_status.parquet"):
            raise KeyboardInterrupt  # stands in for SIGKILL between publishing the data and the marker
        real_publish(local, final)

    monkeypatch.setattr(fs, "publish", die_on_status)
    with pytest.raises(KeyboardInterrupt):
        write_shard(str(out), 0, inputs)
    monkeypatch.setattr(fs, "publish", real_publish)
    (out / ".00000.tar.tmp-99999-deadbeef").write_bytes(b"partial")  # a publish killed mid-copy
    (out / ".00001.tar.tmp-99999-deadbeef").write_bytes(b"other shard")
    assert complete_shards(str(out)) == []

    write_shard(str(out), 0, inputs)
    assert complete_shards(str(out)) == [0]
    assert (out / "00000.tar").read_bytes() == (tmp_path / "ref" / "00000.tar").read_bytes()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".00001.tar.tmp-99999-deadbeef"]


def test_rewriting_a_complete_shard_unmarks_it_before_publishing(tmp_path, monkeypatch):
    write_shard(str(tmp_path), 0, make_inputs(5))
    seen = []
    real_publish = fs.publish

    def spy(local, final):
        seen.append(0 in complete_shards(str(tmp_path)))
        real_publish(local, final)

    monkeypatch.setattr(fs, "publish", spy)
    write_shard(str(tmp_path), 0, make_inputs(7))
    assert seen == [False] * 4
    assert json.loads((tmp_path / "00000_stats.json").read_text())["input_rows"] == 7


def test_exception_inside_with_publishes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(str(tmp_path / "o"), 0) as w:
        sample, status = make_inputs(1)[0]
        w.add(sample)
        w.add_status(status)
        build_dir = w._tmp
        raise RuntimeError("boom")
    assert not (tmp_path / "o").exists() and not os.path.exists(build_dir)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda w, s: (w.add(s[1][0]), w.add(s[0][0])), "increasing key order"),
        (lambda w, s: w.add(Sample("k", {"source": "x"}, b"img", "gif")), "image_ext 'gif'"),
        (lambda w, s: w.add(Sample("k", {"task": "x"})), "no string 'source'"),
        (lambda w, s: w.add(Sample("k", {"source": "x", "conversation": ["hi"]})), "conversation turns"),
        (lambda w, s: w.add(Sample("k", {"source": "x", "meta": {"v": {1, 2}}})), "not JSON-serialisable"),
        (lambda w, s: (w.add_status(s[0][1]), w.add_status(s[0][1]), w.finish({})), "more than one status row"),
        (lambda w, s: (w.add_status(s[0][1]), w.finish({})), "success status rows without a stored sample"),
        (lambda w, s: (w.add(s[0][0]), w.finish({})), "stored samples without a success status row"),
    ],
)
def test_bad_use_raises_a_named_error(tmp_path, mutate, message):
    with pytest.raises(ValueError, match=message), ShardWriter(str(tmp_path), 0) as w:
        mutate(w, make_inputs(2))


def test_unknown_status_and_format_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown status 'ok'"):
        StatusRow("k", 0, "ok")
    with pytest.raises(ValueError, match="unknown shard format 'zip'"):
        ShardWriter(str(tmp_path), 0, "zip")


def test_publish_to_memory_filesystem(tmp_path):
    inputs = make_inputs(11)
    write_shard(str(tmp_path), 5, inputs)
    url = f"memory://tinymix-{uuid.uuid4().hex}/sources/demo"
    stats = write_shard(url, 5, inputs)
    assert stats["stored"] == 9
    assert complete_shards(url) == [5]
    mem = fsspec.filesystem("memory")
    assert mem.cat_file(fs.resolve(fs.join(url, "00005.tar"))[1]) == (tmp_path / "00005.tar").read_bytes()
    assert fs.list_names(url) == sorted(os.listdir(tmp_path))


def test_parquet_column_type_error_names_the_samples(tmp_path):
    with pytest.raises(ValueError, match=r"samples 0000000000\.\.0000000000: a record field"):
        with ShardWriter(str(tmp_path), 0, "parquet") as w:
            w.add(Sample(sample_key(0), {"source": "x", "width": "wide"}))
            w.add_status(StatusRow(sample_key(0), 0, "success"))
            w.finish({})
    assert 0 not in complete_shards(str(tmp_path))


def test_multi_image_samples_in_tar_and_parquet(tmp_path):
    """KEY.0.jpg … KEY.11.jpg in placeholder order: tarfile, webdataset and DuckDB read them; so does ShardReader."""
    from shards.index import ChecksumMismatch, ShardReader

    images = [image_bytes(i, "jpg") for i in range(12)]  # 12: `10.jpg` must not come before `2.jpg`
    turns = [{"role": "user", "content": "<image>" * 12 + "Which?"}, {"role": "assistant", "content": "The third."}]
    record = {"source": "demo", "task": "vqa", "conversation": turns, "images": [f"{i}.jpg" for i in range(12)]}
    multi = Sample(sample_key(0), record, images[0], "jpg", extra_images=images[1:])
    single = Sample(sample_key(1), {**record, "images": None}, images[5], "jpg")
    statuses = [StatusRow(sample_key(r), r, "success") for r in (0, 1)]
    read = {}
    for fmt in ("webdataset", "parquet"):
        out = str(tmp_path / fmt)
        write_shard(out, 0, [(multi, statuses[0]), (single, statuses[1])], fmt)
        index = pq.read_table(f"{out}/00000_index.parquet").to_pylist()
        assert [r["n_images"] for r in index] == [12, 1]
        with ShardReader(out, verify=True) as reader:
            read[fmt] = [reader.read(r) for r in index]
            if fmt == "webdataset":  # the image run alone, as the loader reads it
                members = reader.members({**index[0], "json_offset": -1, "txt_offset": -1})
                assert sorted(members) == sorted(["__key__", *(f"{k}.jpg" for k in range(12))])
    for got in read.values():
        assert got[0]["images"] == images and got[0]["image"] == images[0]
        assert got[1]["images"] == [images[5]] and got[1]["record"]["images"] is None

    with tarfile.open(tmp_path / "webdataset/00000.tar") as t:
        names = t.getnames()
        assert names[:13] == [f"{sample_key(0)}.{k}.jpg" for k in range(12)] + [f"{sample_key(0)}.json"]
        assert names[13:] == [f"{sample_key(1)}.jpg", f"{sample_key(1)}.json"]
    (s0, s1) = wds.WebDataset(str(tmp_path / "webdataset/00000.tar"), shardshuffle=False)
    assert [s0[f"{k}.jpg"] for k in range(12)] == images and s1["jpg"] == images[5]
    rows = duckdb.sql(
        f"select key, image is null, len(images), images[3] from '{tmp_path}/parquet/00000.parquet' order by key"
    ).fetchall()
    assert rows == [(sample_key(0), True, 12, images[2]), (sample_key(1), False, None, None)]

    tar_dir = str(tmp_path / "webdataset")  # one flipped byte in the first image: the run's crc32 catches it
    index = pq.read_table(f"{tar_dir}/00000_index.parquet").to_pylist()
    with open(f"{tar_dir}/00000.tar", "r+b") as f:
        f.seek(index[0]["image_offset"] + 512 + 10)  # past the first member's header
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with ShardReader(tar_dir, verify=True) as reader, pytest.raises(ChecksumMismatch, match="image crc32"):
        reader.read(index[0])
    with ShardWriter(str(tmp_path / "bad"), 0) as w, pytest.raises(ValueError, match="extra_images without a first"):
        w.add(Sample(sample_key(0), record, None, "jpg", extra_images=images[1:]))
