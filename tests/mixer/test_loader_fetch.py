"""Concurrent fetches on an object store: a worker reads a micro batch's samples on a few threads, so their ranged
GETs overlap at the server (moto on 127.0.0.1, each ranged GET held 20 ms and counted), and the batches are the
same as one fetch after another and as the local build's."""

from __future__ import annotations

import json
import shutil

import pytest
import s3fs
from test_loader_fixtures import STAGE, assert_batches_equal, built_stage

from mixer.contract import StageContract
from mixer.loader import StageLoader
from mixer.loader.fetch import FETCH_THREADS, fetch_threads
from mixer.tokenizer import load_tokenizer
from tests.support.harness import RangedGets, moto_s3

pytestmark = pytest.mark.slow

BUCKET = "tinymix-fetch"  # moto keeps buckets per process: other tests' names may exist
SERVER: list[RangedGets] = []


def counting(app):
    SERVER.append(RangedGets(app, delay_s=0.02))
    return SERVER[-1]


@pytest.fixture(scope="module")
def s3_build(tmp_path_factory, tiny_tokenizer):
    """The loader tests' build copied into a bucket, its stage.json pointing at the bucket's length indexes."""
    local = built_stage(tmp_path_factory, tiny_tokenizer)
    copy = tmp_path_factory.mktemp("fetch") / "out"
    shutil.copytree(local, copy)
    url = f"s3://{BUCKET}/out"
    meta = copy / "stages" / STAGE / "stage.json"
    c = StageContract.read(str(copy), STAGE)
    moved = {f: {k: v.replace(str(copy), url) for k, v in getattr(c, f).items()} for f in ("shards", "lengths")}
    c.model_copy(update=moved).write(str(meta))  # object-store locations are stored as they are
    assert json.loads(meta.read_text())["lengths"]["vqa"].startswith(url)
    with moto_s3(BUCKET, wrap=counting) as env, pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # a cached instance would keep another endpoint
        s3fs.S3FileSystem().put(str(copy), f"{BUCKET}/out", recursive=True)
        yield local, url, SERVER[-1]
    s3fs.S3FileSystem.clear_instance_cache()


def test_threads_only_on_an_object_store(tmp_path):
    assert fetch_threads((str(tmp_path),)) == fetch_threads((str(tmp_path),), 16) == 1
    assert fetch_threads((str(tmp_path), f"s3://{BUCKET}/out")) == FETCH_THREADS
    assert fetch_threads((f"s3://{BUCKET}/out",), 3) == 3


def test_a_micro_batch_is_fetched_concurrently_and_reads_the_same(s3_build, tiny_tokenizer):
    local, url, server = s3_build
    tok = load_tokenizer(str(tiny_tokenizer))
    want = list(StageLoader(str(local), STAGE, tokenizer=tok, num_workers=0))
    runs = {}
    for threads in (1, FETCH_THREADS):
        server.reset()
        loader = StageLoader(url, STAGE, tokenizer=tok, num_workers=0, fetch_threads=threads)
        got = list(loader)
        runs[threads] = (server.count, server.peak, loader.stats)
        assert_batches_equal(got, want)
    (serial, serial_peak, serial_stats), (many, many_peak, many_stats) = runs[1], runs[FETCH_THREADS]
    assert serial_peak == 1  # one GET after another
    assert many_peak > 1  # GETs of one micro batch in flight together
    # the same reads, overlapping; two threads may both open a token file first seen in one batch (5 files here)
    assert 0 < serial <= many <= serial + 5
    assert many_stats["samples"] == serial_stats["samples"] and many_stats["skipped_total"] == 0
