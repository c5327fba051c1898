"""End to end: a CC3M-style TSV whose URLs hit every fault of the fault server, built by the Ray job.

Every input row must end in exactly one status row with the right outcome; stats add up; the shards read with
tarfile, webdataset and Ray Data; two builds are byte-identical; Parquet output reads in DuckDB.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shards.build import build_shards
from shards.http_faults import fault_server, stalled_listener
from shards.options import DownloadOptions, ImageOptions, ReaderOptions, ShardOptions
from shards.readers import SourceSpec
from shards.record import sample_key

# The fault server is on 127.0.0.1: these builds opt in to it by name (test_policy.py shows the default refusal).
FAST = DownloadOptions(
    connect_timeout=0.5, read_timeout=0.5, retries=2, backoff=0.01, threads=8, allow_hosts=["127.0.0.1"]
)


def fault_rows(base: str, stalled: str, secret: Path) -> list[tuple[str, str, str | None]]:
    """(caption, url, expected error substring or None for success); `secret` is a JPEG on the local disk."""
    ok = [(f"a photo number {i}", f"{base}/ok/img{i}.jpg", None) for i in range(12)]
    faults = [
        ("missing", f"{base}/404", "http 404"),
        ("flaky server", f"{base}/500-then-ok/img12.jpg", None),
        ("rate limited", f"{base}/429/img13.jpg", None),
        ("connect timeout", f"{stalled}/img.jpg", "timeout"),
        ("read timeout", f"{base}/slow-connect", "timeout"),
        ("slow drip", f"{base}/drip/img14.jpg", "timeout"),
        ("cut short", f"{base}/truncated/img15.jpg", "truncated"),
        ("a web page", f"{base}/html", "not an image"),
        ("broken jpeg", f"{base}/corrupt.jpg", "corrupt"),
        ("bomb", f"{base}/bomb.png", "too many pixels"),
        ("loop", f"{base}/redirect-loop", "redirect"),
        ("moved", f"{base}/redirect/2/img16.jpg", None),
        ("no ai", f"{base}/noai/img17.jpg", "x-robots-tag"),
        ("ftp", "ftp://example.invalid/x.jpg", "scheme"),
    ]
    # A URL column naming local files or object stores: refused by the reader, nothing opened (status failed_to_read).
    not_urls = [
        ("a local path", str(secret), "scheme not allowed: none"),
        ("a file url", secret.as_uri(), "scheme not allowed: file"),
        ("an s3 url", "s3://bucket/secret.jpg", "scheme not allowed: s3"),
        ("a gs url", "gs://bucket/secret.jpg", "scheme not allowed: gs"),
        ("a data url", "data:image/jpeg;base64,/9j/4AAQ", "scheme not allowed: data"),
    ]
    return ok + faults + not_urls


def write_tsv(path: Path, rows: list[tuple[str, str, str | None]], bad_line_at: int) -> None:
    lines = [f"{cap}\t{url}" for cap, url, _ in rows]
    lines.insert(bad_line_at, "a line with no tab at all")
    path.write_text("\n".join(lines) + "\n")


def spec(path: Path) -> SourceSpec:
    return SourceSpec(
        name="cc3m", kind="cc3m-tsv", paths=[str(path)], task="caption", image_root=None, options=ReaderOptions()
    )


def status_of(out: Path) -> dict[str, dict]:
    rows = {}
    for f in sorted((out / "sources/cc3m").glob("*_status.parquet")):
        for r in pq.read_table(f).to_pylist():
            assert r["key"] not in rows, f"{r['key']} has two status rows"
            rows[r["key"]] = r
    return rows


@pytest.fixture(scope="module")
def served(images):
    with fault_server(images, drip_every=0.3, hang_seconds=3) as base, stalled_listener() as stalled:
        yield base, stalled


def test_every_row_accounted_for(tmp_path: Path, served, images, ray_local) -> None:
    base, stalled = served
    secret = tmp_path / "secret" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(images["img0.jpg"])
    rows = fault_rows(base, stalled, secret)
    bad_at = 5
    write_tsv(tmp_path / "in.tsv", rows, bad_at)
    opts = ShardOptions(samples_per_shard=8, download=FAST, image=ImageOptions(size=64, resize_mode="center_crop"))
    reports = build_shards([spec(tmp_path / "in.tsv")], opts, str(tmp_path / "out"), progress=False)

    n_input = len(rows) + 1
    status = status_of(tmp_path / "out")
    assert sorted(status) == [sample_key(i) for i in range(n_input)]
    expected = [(cap, err) for cap, _, err in rows]
    expected.insert(bad_at, ("<bad line>", "read"))
    for i, (cap, err) in enumerate(expected):
        got = status[sample_key(i)]
        if err is None:
            assert got["status"] == "success", (cap, got)
            assert (got["width"], got["height"]) == (64, 64)
        elif err == "read" or err.startswith("scheme not allowed"):
            assert got["status"] == "failed_to_read" and "in.tsv" in got["error_message"], got
            assert err == "read" or err in got["error_message"], got
        else:
            assert got["status"] != "success" and err in got["error_message"].lower(), (cap, got)

    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "out/sources/cc3m").glob("*_stats.json"))]
    assert sum(s["input_rows"] for s in stats) == n_input
    assert sum(sum(s["counts"].values()) for s in stats) == n_input
    rep = reports["cc3m"]
    assert rep.input_rows == n_input and sum(rep.by_status.values()) == n_input
    assert rep.by_status["success"] == 12 + 3
    build = json.loads((tmp_path / "out/build.json").read_text())
    assert build["sources"]["cc3m"]["counts"] == dict(sorted(rep.by_status.items()))
    # the summary's stages: the shard tasks' timings summed (disjoint, so the shares add up to 1), start-up apart
    assert set(build["stages"]) == {"read", "fetch_wait", "image", "write"}
    assert sum(st["seconds"] for st in build["stages"].values()) == pytest.approx(
        sum(sum(s["timings"].values()) for s in stats), abs=0.01
    )
    assert sum(st["share_of_task_time"] for st in build["stages"].values()) == pytest.approx(1.0, abs=1e-3)
    assert build["stages"]["image"]["seconds"] > 0 and build["ray_startup_seconds"] >= 0

    index = pq.read_table(tmp_path / "out/sources/cc3m/index.parquet").to_pylist()
    assert [r["key"] for r in index] == sorted(k for k, s in status.items() if s["status"] == "success")


def test_shards_read_with_standard_tools_and_rebuild_is_identical(tmp_path: Path, served, ray_local) -> None:
    import ray
    import webdataset as wds

    base, _ = served
    rows = [(f"caption {i}", f"{base}/ok/img{i}.jpg", None) for i in range(20)]
    write_tsv(tmp_path / "in.tsv", rows, 3)
    opts = ShardOptions(samples_per_shard=8, download=FAST, image=ImageOptions(size=48))
    for out in ("a", "b"):
        build_shards([spec(tmp_path / "in.tsv")], opts, str(tmp_path / out), progress=False)
    tars = sorted((tmp_path / "a/sources/cc3m").glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    for t in tars:
        assert t.read_bytes() == (tmp_path / "b/sources/cc3m" / t.name).read_bytes()

    names = [m.name for t in tars for m in tarfile.open(t).getmembers()]
    assert len(names) == 20 * 3  # jpg, json, txt per stored sample (the bad line stored nothing)
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode("pil"))
    assert len(samples) == 20
    assert samples[0]["jpg"].size == (48, 48) and samples[0]["txt"] == "caption 0"
    assert samples[0]["json"]["conversation"][1]["content"] == "caption 0"
    ds = ray.data.read_webdataset([str(t) for t in tars])
    assert ds.count() == 20


def test_parquet_format_reads_in_duckdb(tmp_path: Path, served, ray_local) -> None:
    import duckdb

    base, _ = served
    rows = [(f"caption {i}", f"{base}/ok/img{i}.jpg", None) for i in range(10)]
    write_tsv(tmp_path / "in.tsv", rows, 0)
    opts = ShardOptions(format="parquet", samples_per_shard=6, download=FAST, image=ImageOptions(size=32))
    build_shards([spec(tmp_path / "in.tsv")], opts, str(tmp_path / "out"), progress=False)
    files = sorted(str(p) for p in (tmp_path / "out/sources/cc3m").glob("0000?.parquet"))
    assert len(files) == 2
    got = duckdb.sql(f"select key, caption from read_parquet({files!r}) order by key").fetchall()
    assert got == [(sample_key(i + 1), f"caption {i}") for i in range(10)]
