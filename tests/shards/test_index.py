"""Index parts, their streaming merge and random access: a sample read by offset or row group is the stored bytes."""

from __future__ import annotations

import io
import os
import tarfile
import uuid

import duckdb
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shards import fs
from shards.index import INDEX_SCHEMA, ShardReader, iter_index, merge_index, read_sample
from shards.record import sample_key
from shards.status import StatusRow
from shards.writer import Sample, ShardWriter, encode_json


def make_sample(row: int) -> Sample:
    """Rows ≡ 2 (mod 3) are text-only; even rows carry a caption; images alternate jpg / png."""
    turns = [{"role": "user", "content": "<image> What is shown?"}, {"role": "assistant", "content": "x" * row}]
    record = {"source": "demo", "task": "vqa", "conversation": turns}
    if row % 3 == 2:
        return Sample(sample_key(row), record)
    ext = "jpg" if row % 2 else "png"
    buf = io.BytesIO()
    Image.new("RGB", (10 + row, 7 + row), (row * 23 % 256, 1, 2)).save(buf, {"jpg": "JPEG", "png": "PNG"}[ext])
    return Sample(sample_key(row), record, buf.getvalue(), ext, f"caption {row}" if row % 2 == 0 else None)


def write(out_dir: str, shard: int, rows: range, fmt: str = "webdataset", failed: tuple[int, ...] = ()) -> None:
    with ShardWriter(out_dir, shard, fmt, row_group_size=4) as w:
        for row in rows:
            if row in failed:
                w.add_status(StatusRow(sample_key(row), row, "failed_to_read", "missing file"))
                continue
            w.add(make_sample(row))
            w.add_status(StatusRow(sample_key(row), row, "success"))
        w.finish({})


def index_rows(out_dir: str, shard: int) -> list[dict]:
    return pq.read_table(os.path.join(out_dir, f"{shard:05d}_index.parquet")).to_pylist()


def test_index_part_columns_and_offsets_match_tarfile(tmp_path):
    write(str(tmp_path), 2, range(10), failed=(4,))
    rows = {r["key"]: r for r in index_rows(str(tmp_path), 2)}
    with tarfile.open(tmp_path / "00002.tar") as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".")
            column = "image" if ext in ("jpg", "png") else ext
            assert (rows[key][f"{column}_offset"], rows[key][f"{column}_size"]) == (m.offset_data, m.size)
    assert [r["row"] for r in rows.values()] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    for row, r in zip([0, 1, 2, 3, 5, 6, 7, 8, 9], rows.values(), strict=True):
        s = make_sample(row)
        assert (r["shard"], r["source"], r["n_images"], r["image_ext"]) == (
            2,
            "demo",
            int(s.image is not None),
            s.image_ext,
        )
        assert r["text_chars"] == len("<image> What is shown?") + row
        assert (r["row_group"], r["row_in_group"]) == (-1, -1)
        if s.image is None:
            assert (r["image_offset"], r["image_size"]) == (-1, -1)
        if s.caption is None:
            assert (r["txt_offset"], r["txt_size"]) == (-1, -1)


def test_random_access_returns_the_stored_tar_bytes(tmp_path):
    write(str(tmp_path), 0, range(17), failed=(3, 11))
    with tarfile.open(tmp_path / "00000.tar") as tar:
        extracted: dict[str, dict] = {}
        for m in tar.getmembers():
            key, ext = m.name.split(".")
            extracted.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
    rows = index_rows(str(tmp_path), 0)
    with ShardReader(str(tmp_path)) as reader:
        for r in reversed(rows):  # out of order on purpose
            assert reader.members(r) == extracted[r["key"]]
    assert len(rows) == len(extracted) == 15


def test_parquet_random_access_matches_the_tar_members(tmp_path):
    tar_dir, pq_dir = str(tmp_path / "t"), str(tmp_path / "p")
    write(tar_dir, 1, range(11), failed=(0,))
    write(pq_dir, 1, range(11), "parquet", failed=(0,))
    pq_rows = index_rows(pq_dir, 1)
    assert [(r["row_group"], r["row_in_group"]) for r in pq_rows] == [(g, i) for g in range(3) for i in range(4)][:10]
    assert all(r["image_offset"] == r["json_offset"] == -1 for r in pq_rows)
    with ShardReader(tar_dir) as t, ShardReader(pq_dir, cached_row_groups=1) as p:
        for tr, pr in zip(index_rows(tar_dir, 1), pq_rows, strict=True):
            assert p.members(pr) == t.members(tr)
        for pr in pq_rows[::-1]:
            assert p.read(pr) == t.read(next(r for r in index_rows(tar_dir, 1) if r["key"] == pr["key"]))


def test_read_sample_decodes_record_image_and_caption(tmp_path):
    write(str(tmp_path), 0, range(5))
    rows = index_rows(str(tmp_path), 0)
    for r in rows:
        s = make_sample(r["row"])
        got = read_sample(str(tmp_path), r)
        assert got == {
            "key": s.key,
            "record": s.record,
            "image": s.image,
            "image_ext": s.image_ext,
            "caption": s.caption,
        }
        assert encode_json(got["record"], "t") == encode_json(s.record, "t")


def test_merge_of_three_parts_streams_one_row_group_per_part(tmp_path):
    out = str(tmp_path)
    write(out, 0, range(0, 6))
    write(out, 1, range(6, 9), failed=(6, 7, 8))  # nothing stored: an empty part
    write(out, 2, range(9, 14), failed=(10,))
    (tmp_path / ".00003_index.parquet.tmp-1-abc").write_bytes(b"junk")  # stale temp file: ignored
    merged = merge_index(out)
    assert merged == os.path.join(out, "index.parquet")
    meta = pq.ParquetFile(merged).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [6, 0, 4]
    table = pq.read_table(merged)
    assert table.schema.equals(INDEX_SCHEMA)
    assert table.column("key").to_pylist() == [sample_key(r) for r in [0, 1, 2, 3, 4, 5, 9, 11, 12, 13]]
    assert table.column("shard").to_pylist() == [0] * 6 + [2] * 4
    assert table.to_pylist() == index_rows(out, 0) + index_rows(out, 2)
    chunks = list(iter_index(merged, columns=["key", "text_chars"]))
    assert [c.num_rows for c in chunks] == [6, 0, 4] and chunks[0].column_names == ["key", "text_chars"]
    assert duckdb.sql(f"select count(*), sum(n_images) from '{merged}'").fetchall() == [(10, 7)]
    for name in ("row", "shard", "n_images", "text_chars", "image_offset", "row_group"):
        assert table.column(name).to_numpy().dtype.kind == "i"  # no nulls, no float casts


def test_merge_refuses_a_part_of_an_interrupted_shard(tmp_path):
    write(str(tmp_path), 0, range(3))
    write(str(tmp_path), 1, range(3, 6))
    os.remove(tmp_path / "00001_status.parquet")
    with pytest.raises(ValueError, match=r"shards \[1\] have no index part or no status file"):
        merge_index(str(tmp_path))
    assert not (tmp_path / "index.parquet").exists()


def test_stale_index_row_is_a_named_error(tmp_path):
    write(str(tmp_path), 0, range(6), "parquet")
    row = dict(index_rows(str(tmp_path), 0)[1], row_in_group=2)
    with pytest.raises(ValueError, match="does not hold key 0000000001"):
        read_sample(str(tmp_path), row)


def test_memory_filesystem_round_trip(tmp_path):
    url = f"memory://tinymix-{uuid.uuid4().hex}/sources/demo"
    for fmt in ("webdataset", "parquet"):
        base = f"{url}/{fmt}"
        write(base, 0, range(5))
        write(base, 1, range(5, 12), fmt, failed=(7,))
        write(str(tmp_path / fmt), 1, range(5, 12), fmt, failed=(7,))
        merged = merge_index(base)
        assert merged == f"{base}/index.parquet"
        rows = [r for t in iter_index(merged) for r in t.to_pylist()]
        assert [r["shard"] for r in rows] == [0] * 5 + [1] * 6
        local_rows = index_rows(str(tmp_path / fmt), 1)
        with ShardReader(base) as remote, ShardReader(str(tmp_path / fmt)) as local:
            assert [remote.members(r) for r in rows[5:]] == [local.members(r) for r in local_rows]
            for r in rows:
                assert remote.read(r)["record"] == make_sample(r["row"]).record
        assert not any(fs.is_temp_name(n) for n in fs.list_names(base))


def test_reader_reopens_handles_in_a_forked_child(tmp_path):
    write(str(tmp_path), 0, range(4))
    rows = index_rows(str(tmp_path), 0)
    reader = ShardReader(str(tmp_path))
    expected = [reader.members(r) for r in rows]  # the parent has the shard open now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the same reader object, created and used before the fork
        ok = [reader.members(x) for x in reversed(rows)] == expected[::-1] and reader._pid == os.getpid()
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    assert reader.members(rows[2]) == expected[2] and reader._pid == os.getpid()
    reader.close()
