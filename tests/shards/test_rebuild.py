"""A rebuild rebuilds what changed: after a change of options or rows, or damage, it equals a fresh build.

Each case builds a source, changes one thing (samples per shard, image size, the split filter), rebuilds into the
same folder and builds afresh into another: the two folders must hold the same files with the same bytes (the stats
but for their timings), no index may hold a key twice, and the rebuild must say what it rebuilt and why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from mixer.build import build, drop_stale_lengths, report_lines
from mixer.manifest import load_manifest
from shards.index import index_id
from shards.testing import shards_manifest

ROWS = 10  # split 1 for rows 0-6, split 2 for rows 7-9


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, images: dict[str, bytes]) -> Path:
    root = tmp_path_factory.mktemp("rebuild")
    (root / "covers").mkdir()
    doc = {}
    for i in range(ROWS):
        key = f"b{i:03d}"
        (root / "covers" / f"{key}.jpg").write_bytes(images[f"img{i}.jpg"])
        doc[key] = {
            "imageURL": f"http://example.invalid/{key}.jpg",
            "questions": [f"Who wrote book {i}?"],
            "answers": [f"author {i}"],
            "title": f"t{i}",
            "authorName": f"a{i}",
            "genre": "g",
            "split": 1 if i < 7 else 2,
        }
    (root / "dataset.json").write_text(json.dumps(doc))
    (root / "tok").mkdir()
    return root


def manifest(root: Path, name: str, *, per_shard: int = 3, size: int = 32, split: list[str] | None = None) -> Path:
    source = {"kind": "ocrvqa-json", "paths": "dataset.json", "image_root": "covers"}
    if split is not None:
        source["options"] = {"split": split}
    doc = yaml.safe_load(shards_manifest("rebuild", {"ocr": source}, per_shard))
    doc["shards"]["image"]["size"] = size
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(path: Path, out: Path) -> list[str]:
    return report_lines(build(load_manifest(path), out=str(out)))


def folder(out: Path) -> dict[str, object]:
    """Every file of the source folder: bytes, or for stats the parsed JSON without timings."""
    files: dict[str, object] = {}
    for p in sorted((out / "sources/ocr").iterdir()):
        if p.name.endswith("_stats.json"):
            files[p.name] = {k: v for k, v in json.loads(p.read_text()).items() if k != "timings"}
        else:
            files[p.name] = p.read_bytes()
    return files


def index_keys(out: Path) -> list[str]:
    return pq.read_table(out / "sources/ocr/index.parquet").column("key").to_pylist()


CHANGES = {
    "samples_per_shard": ({"per_shard": 3}, {"per_shard": 4}, "shards.samples_per_shard 3 -> 4"),
    "image_size": ({"size": 32}, {"size": 48}, "shards.image.size 32 -> 48"),
    "split_narrowed": (
        {"split": ["train", "val"]},
        {"split": ["train"]},
        'source.options.split ["train", "val"] -> ["train"]',
    ),
    "split_matches_nothing": ({"split": ["train", "val"]}, {"split": ["test"]}, None),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_rebuild_after_a_change_equals_a_fresh_build(tmp_path: Path, corpus: Path, ray_local, change: str) -> None:
    before, after, reason = CHANGES[change]
    run(manifest(corpus, f"{change}-before", **before), tmp_path / "out")
    lines = run(manifest(corpus, f"{change}-after", **after), tmp_path / "out")
    run(manifest(corpus, f"{change}-after", **after), tmp_path / "fresh")

    assert folder(tmp_path / "out") == folder(tmp_path / "fresh")
    keys = index_keys(tmp_path / "out")
    assert len(keys) == len(set(keys)), "a key is indexed twice"
    if reason is not None:
        assert any("rebuilt" in line and reason in line for line in lines), lines
    if change in ("samples_per_shard", "split_narrowed", "split_matches_nothing"):
        assert any("removed" in line and "stale shards" in line for line in lines), lines
    if change == "split_matches_nothing":
        assert keys == [] and sorted(os.listdir(tmp_path / "out/sources/ocr")) == ["index.parquet"]


def test_unchanged_rerun_reuses_every_shard(tmp_path: Path, corpus: Path, ray_local) -> None:
    path = manifest(corpus, "same")
    run(path, tmp_path / "out")
    first = folder(tmp_path / "out")
    lines = run(path, tmp_path / "out")
    assert lines == ["         ocr: 10 rows in 4 shards (4 reused): success 10"]
    assert folder(tmp_path / "out") == first


def test_truncated_shard_with_status_is_rebuilt(tmp_path: Path, corpus: Path, ray_local) -> None:
    path = manifest(corpus, "trunc")
    run(path, tmp_path / "out")
    reference = folder(tmp_path / "out")
    tar = tmp_path / "out/sources/ocr/00001.tar"
    full = tar.stat().st_size
    with open(tar, "r+b") as f:  # cut mid-member, as a copy or a disk that lost its tail would
        f.truncate(full - 700)
    assert (tmp_path / "out/sources/ocr/00001_status.parquet").exists()
    lines = run(path, tmp_path / "out")
    assert f"rebuilt 1 shards (00001), damaged: 00001.tar is {full - 700} bytes, recorded {full}" in "\n".join(lines)
    assert "(3 reused)" in lines[0]
    assert folder(tmp_path / "out") == reference


def test_index_part_with_wrong_row_count_is_rebuilt(tmp_path: Path, corpus: Path, ray_local) -> None:
    path = manifest(corpus, "rows")
    run(path, tmp_path / "out")
    reference = folder(tmp_path / "out")
    part = tmp_path / "out/sources/ocr/00002_index.parquet"
    table = pq.read_table(part)
    pq.write_table(table.slice(0, 1), part)  # a complete-looking part that lost rows: its size differs too
    lines = run(path, tmp_path / "out")
    assert any("rebuilt 1 shards (00002), damaged: 00002_index.parquet" in line for line in lines), lines
    assert folder(tmp_path / "out") == reference


def test_length_indexes_of_changed_shards_are_dropped(tmp_path: Path, corpus: Path, ray_local) -> None:
    run(manifest(corpus, "len"), tmp_path / "out")
    ident = index_id(str(tmp_path / "out/sources/ocr/index.parquet"))
    assert ident
    current, stale, unmarked = (tmp_path / "out/lengths" / k / "ocr" for k in ("k1", "k2", "k3"))
    for d in (current, stale, unmarked):
        d.mkdir(parents=True)
        (d / "lengths.parquet").write_bytes(b"x")
    (current / "index_id").write_text(ident)
    (stale / "index_id").write_text("0" * 64)
    dropped = drop_stale_lengths(str(tmp_path / "out"), ["ocr"])
    assert sorted(dropped) == sorted([str(stale), str(unmarked)])
    assert current.exists() and not stale.exists() and not unmarked.exists()

    run(manifest(corpus, "len2", size=40), tmp_path / "out")  # rebuilt shards: a new index id
    assert index_id(str(tmp_path / "out/sources/ocr/index.parquet")) != ident
    assert drop_stale_lengths(str(tmp_path / "out"), ["ocr"]) == [str(current)]
