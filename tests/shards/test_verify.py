"""`mixer verify`: damage named by shard and key (exit 2); member checksums checked by readers on demand."""

from __future__ import annotations

import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mixer.cli import app
from shards.index import VERIFY_ENV, ChecksumMismatch, ShardReader, merge_index
from shards.record import sample_key
from shards.status import StatusRow
from shards.writer import Sample, ShardWriter

PER_SHARD = 3


def write_build(out: Path, images: dict[str, bytes], fmt: str = "webdataset", n: int = 7) -> Path:
    """A one-source build of `n` samples (every third text-only), written by the real shard writer."""
    src = out / "sources" / "cap"
    for shard in range((n + PER_SHARD - 1) // PER_SHARD):
        with ShardWriter(str(src), shard, fmt) as w:
            for row in range(shard * PER_SHARD, min(n, (shard + 1) * PER_SHARD)):
                key = sample_key(row)
                conv = [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": f"caption {row}"}]
                image = images[f"img{row}.jpg"] if row % 3 else None
                record = {"source": "cap", "task": "caption", "conversation": conv}
                w.add(Sample(key, record, image, "jpg" if image else None, f"caption {row}"))
                w.add_status(StatusRow(key=key, row=row, status="success"))
            w.finish({}, {"rows": [shard]})
    merge_index(str(src))
    return src


def verify(out: Path) -> tuple[int, str, str]:
    got = CliRunner().invoke(app, ["verify", str(out)])
    return got.exit_code, got.stdout, got.stderr


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_intact_build_verifies(tmp_path: Path, images: dict[str, bytes], fmt: str) -> None:
    write_build(tmp_path, images, fmt)
    code, out, err = verify(tmp_path)
    assert (code, err) == (0, ""), err
    assert out == "7 samples in 3 shards of 1 sources checked\n"


def index_row(src: Path, key: str) -> dict:
    return next(r for r in pq.read_table(src / "index.parquet").to_pylist() if r["key"] == key)


def test_flipped_image_byte_is_named_by_shard_and_key(tmp_path: Path, images: dict[str, bytes]) -> None:
    src = write_build(tmp_path, images)
    row = index_row(src, sample_key(4))
    with open(src / "00001.tar", "r+b") as f:  # same size: only the checksum can tell
        f.seek(row["image_offset"] + row["image_size"] // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, _, err = verify(tmp_path)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("cap shard 00001 key 0000000004: image crc32 "), err
    assert lines[1:] == ["1 problems: rebuild with `mixer build`"]


def test_truncated_tar_names_the_shard_and_the_keys_it_lost(tmp_path: Path, images: dict[str, bytes]) -> None:
    src = write_build(tmp_path, images)
    row = index_row(src, sample_key(5))  # the last sample of shard 1
    with open(src / "00001.tar", "r+b") as f:
        f.truncate(row["image_offset"] + 10)
    code, _, err = verify(tmp_path)
    assert code == 2
    assert "cap shard 00001: 00001.tar is" in err, err
    assert "cap shard 00001 key 0000000005: unreadable" in err, err
    assert "key 0000000003" not in err and "shard 00000" not in err and "shard 00002" not in err, err


def test_index_gone_stale_is_damage(tmp_path: Path, images: dict[str, bytes]) -> None:
    src = write_build(tmp_path, images)
    table = pq.read_table(src / "index.parquet")
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), src / "index.parquet")
    code, _, err = verify(tmp_path)
    assert code == 2
    assert "cap shard 00000 key 0000000000: key indexed twice" in err, err


def test_not_a_build_is_one_line(tmp_path: Path) -> None:
    code, _, err = verify(tmp_path)
    assert code == 2 and err.strip().splitlines() == [
        f"{tmp_path}/sources: no sources found (not a build folder? run `mixer build` first)"
    ]


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_reader_checks_checksums_when_asked(
    tmp_path: Path, images: dict[str, bytes], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_build(tmp_path, images, fmt)
    row = index_row(src, sample_key(1))
    assert row["image_crc32"] == zlib.crc32(images["img1.jpg"])
    assert row["txt_crc32"] == zlib.crc32(b"caption 1")
    bad = {**row, "image_crc32": row["image_crc32"] ^ 1}
    with ShardReader(str(src)) as reader:  # off by default
        assert reader.members(bad)["jpg"] == images["img1.jpg"]
    with ShardReader(str(src), verify=True) as reader:
        assert reader.members(row)["jpg"] == images["img1.jpg"]
        with pytest.raises(ChecksumMismatch, match=r"shard 0 key 0000000001: image crc32"):
            reader.members(bad)
    monkeypatch.setenv(VERIFY_ENV, "1")
    with ShardReader(str(src)) as reader, pytest.raises(ChecksumMismatch):
        reader.members(bad)
