"""S3 round trip against a local S3-compatible server (moto on 127.0.0.1): sources read from, shards written to and
samples read back from `s3://`, compared with a local build of the same files.

Two sources: a CC3M TSV whose images are URLs on the fault server, and a LLaVA JSON whose images live in the bucket
next to it (the downloader reads them through fsspec). The build runs as `mixer build` in a subprocess whose Ray
workers find the server through `AWS_ENDPOINT_URL`, as they would find a real object store through the usual
AWS variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import s3fs

from mixer.build import build
from mixer.manifest import load_manifest
from shards.fs import is_temp_name
from shards.http_faults import FaultServer
from shards.index import ShardReader, iter_index
from shards.testing import CLUSTER_ENV, moto_s3, shards_manifest
from shards.verify import verify_build

pytestmark = pytest.mark.slow

BUCKET = "tinymix"
CC3M_ROWS, LLAVA_ROWS, PER_SHARD = 12, 6, 4


def source_tree(base_url: str, images: dict[str, bytes]) -> dict[str, bytes]:
    """The input files by path relative to the data root: a CC3M TSV, a LLaVA JSON and the LLaVA images."""
    tsv = "".join(f"caption {i}\t{base_url}/ok/img{i}.jpg?i={i}\n" for i in range(CC3M_ROWS))
    chat = []
    for i in range(LLAVA_ROWS):
        turns = [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]
        if i == 3:  # a text-only row
            chat.append({"id": f"t{i}", "conversations": turns})
            continue
        turns[0]["value"] = "<image>\n" + turns[0]["value"]
        chat.append({"id": f"v{i}", "image": f"coco/train2017/{i:012d}.jpg", "conversations": turns})
    files = {"cc3m/in.tsv": tsv.encode(), "llava/chat.json": json.dumps(chat).encode()}
    for i in range(LLAVA_ROWS):
        files[f"llava/images/coco/train2017/{i:012d}.jpg"] = images[f"img{12 + i}.jpg"]
    return files


def write_manifest(path: Path, root: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "tok").mkdir(exist_ok=True)
    sources = {
        "cc3m": {"kind": "cc3m-tsv", "paths": f"{root}/cc3m/in.tsv"},
        "llava": {"kind": "llava-json", "paths": f"{root}/llava/chat.json", "image_root": f"{root}/llava/images"},
    }
    (path / "m.yaml").write_text(shards_manifest("s3", sources, PER_SHARD))
    return path / "m.yaml"


def local_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def read_all(out_url: str, source: str) -> list[dict]:
    folder = f"{out_url}/sources/{source}"
    with ShardReader(folder) as reader:
        return [reader.read(row) for table in iter_index(f"{folder}/index.parquet") for row in table.to_pylist()]


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch):
    with moto_s3(BUCKET) as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # a cached instance would keep another endpoint
        yield env
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_sources_and_shards_round_trip_equal_a_local_build(tmp_path: Path, images, s3_env, ray_local) -> None:
    s3 = s3fs.S3FileSystem()
    with FaultServer(images) as server:
        tree = source_tree(server.url, images)
        for rel, data in tree.items():
            s3.pipe_file(f"{BUCKET}/src/{rel}", data)
            (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "src" / rel).write_bytes(data)

        remote = write_manifest(tmp_path / "remote", f"s3://{BUCKET}/src")
        cmd = [sys.executable, "-m", "mixer.cli", "build", str(remote), "--out", f"s3://{BUCKET}/run", "--shards-only"]
        env = {**os.environ, **s3_env, **CLUSTER_ENV}
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"cc3m: {CC3M_ROWS} rows in 3 shards (0 reused): success {CC3M_ROWS}" in done.stdout, done.stdout
        assert f"llava: {LLAVA_ROWS} rows in 2 shards (0 reused): success {LLAVA_ROWS}" in done.stdout, done.stdout

        local = write_manifest(tmp_path / "local", str(tmp_path / "src"))
        build(load_manifest(local), out=str(tmp_path / "ref"))

    reference = local_files(tmp_path / "ref")
    prefix = f"{BUCKET}/run/"
    stored = {key.removeprefix(prefix): key for key in s3.find(prefix)}
    shard_files = {f"{k:05d}{suffix}" for k in range(3) for suffix in (".tar", "_index.parquet", "_status.parquet")}
    assert {f"sources/cc3m/{n}" for n in shard_files} | {"sources/cc3m/index.parquet", "build.json"} <= set(stored)
    assert set(stored) == set(reference), "object names differ from the local build's file names"
    assert not [k for k in stored if is_temp_name(k.rsplit("/", 1)[-1])]

    # CC3M: every object but the timing-bearing stats is byte-identical to the local build.
    for rel in (r for r in stored if r.startswith("sources/cc3m/") and not r.endswith("_stats.json")):
        assert s3.cat_file(stored[rel]) == reference[rel], rel
    # Samples read back by the index through ranged GETs equal the local ones; LLaVA records name their image by
    # its path, which differs only by the root.
    assert read_all(f"s3://{BUCKET}/run", "cc3m") == read_all(str(tmp_path / "ref"), "cc3m")
    from_s3 = read_all(f"s3://{BUCKET}/run", "llava")
    from_disk = read_all(str(tmp_path / "ref"), "llava")
    assert len(from_s3) == LLAVA_ROWS
    for sample in from_s3:
        image = sample["record"]["image"]
        if image is not None:
            assert image.startswith(f"s3://{BUCKET}/src/llava/images/"), image
            sample["record"]["image"] = image.replace(f"s3://{BUCKET}/src", str(tmp_path / "src"))
    assert from_s3 == from_disk
    assert sum(s["image"] is not None for s in from_s3) == LLAVA_ROWS - 1

    # A rerun against the bucket checks every shard there (one listing, stats and footers by GET) and reuses them
    # all; `mixer verify`'s checks find nothing wrong through ranged reads.
    again = build(load_manifest(remote), out=f"s3://{BUCKET}/run")
    assert {n: (r.skipped_shards, r.rebuilt, r.removed) for n, r in again.items()} == {
        "cc3m": (3, {}, []),
        "llava": (2, {}, []),
    }
    checked = verify_build(f"s3://{BUCKET}/run", progress=False)
    assert (checked.damage, checked.samples) == ([], CC3M_ROWS + LLAVA_ROWS)
