"""Stage plans on `s3://` (moto on 127.0.0.1): stored and read back exactly as a local plan, and a full `mixer build`
to a bucket that a StageLoader trains from directly, batch for batch equal to a local build of the same manifest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
import torch
from test_loader_fixtures import STAGE, built_stage

from mixer.loader import StageLoader
from mixer.loader.dataset import read_stage
from mixer.plan import PlanReader, PlanSpec, SourceInput, plan_stage
from mixer.tokenizer import load_tokenizer
from tests.shards.test_index import is_temp_name
from tests.support.harness import CLUSTER_ENV, moto_s3

pytestmark = pytest.mark.slow

BUCKET = "tinymix-plans"  # moto keeps its buckets per process: tests/shards/test_s3.py's "tinymix" may exist
SPEC = PlanSpec(seq_len=100, weight_by="tokens", seed=7, num_sequences=300, window=8)


def sources() -> list[SourceInput]:
    rng = np.random.default_rng(0)
    return [
        SourceInput("caps", 2.0, rng.integers(5, 30, 400).astype(np.int32), images=np.ones(400, np.int8)),
        SourceInput("chat", 1.0, rng.integers(20, 90, 300).astype(np.int32)),
    ]


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def s3_files(s3: s3fs.S3FileSystem, prefix: str) -> dict[str, bytes]:
    return {key.removeprefix(f"{prefix}/"): s3.cat_file(key) for key in s3.find(prefix)}


@pytest.fixture(scope="module")
def s3_env():
    """One server for the module (a second one in this process would find the bucket already made)."""
    with moto_s3(BUCKET) as env, pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # a cached instance would keep another endpoint
        yield env
    s3fs.S3FileSystem.clear_instance_cache()


def test_plan_on_s3_is_the_local_plan_object_for_file(tmp_path: Path, s3_env, monkeypatch) -> None:
    url, local = f"s3://{BUCKET}/plans/s1", tmp_path / "s1"
    want = plan_stage(sources(), SPEC, local, windows_per_chunk=3)
    got = plan_stage(sources(), SPEC, url, windows_per_chunk=3)
    assert got.to_dict() == want.to_dict()
    s3 = s3fs.S3FileSystem()
    assert s3_files(s3, f"{BUCKET}/plans/s1") == local_files(local)  # same names, same bytes, no temp objects

    remote, ref = PlanReader(url), PlanReader(local)
    assert isinstance(ref.windows, np.memmap) and not isinstance(remote.windows, np.memmap)
    assert remote.summary == ref.summary and len(remote) == len(ref) == 300
    for start in (0, 1, 37, 150, 298, 300):
        assert [s.tobytes() for s in remote.sequences(start)] == [s.tobytes() for s in ref.sequences(start)]

    # Opening near the end GETs the last chunk only: nothing that comes before it.
    gets: list[str] = []
    real = remote.files.remote.cat_file
    monkeypatch.setattr(remote.files.remote, "cat_file", lambda path, **kw: gets.append(path) or real(path, **kw))
    assert len(list(remote.sequences(298))) == 2
    last = f"{BUCKET}/plans/s1/chunks/{(remote.meta['num_windows'] - 1) // 3:05d}"
    assert gets == [f"{last}.segments.npy", f"{last}.sequences.npy"]


def test_plan_errors_on_s3_name_the_url_and_the_fix(tmp_path: Path, s3_env) -> None:
    s3 = s3fs.S3FileSystem()
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"s3://{BUCKET}/none/summary.json: not found") + ".*mixer build"
    ):
        PlanReader(f"s3://{BUCKET}/none")
    stage_json = re.escape(f"s3://{BUCKET}/none/stages/{STAGE}/stage.json")
    with pytest.raises(FileNotFoundError, match=stage_json + ".*run `mixer build`"):
        read_stage(f"s3://{BUCKET}/none", STAGE)
    # A plan whose writer was killed (a chunk, no plan.json or summary.json) is unfinished: it reads as missing and
    # is replaced by the next plan, here with larger chunks, leaving no stale chunk behind; a local one likewise.
    s3.pipe_file(f"{BUCKET}/half/chunks/00007.segments.npy", b"partial")
    with pytest.raises(FileNotFoundError, match="half/summary.json: not found"):
        PlanReader(f"s3://{BUCKET}/half")
    (tmp_path / "half" / "chunks").mkdir(parents=True)
    (tmp_path / "half" / "chunks" / "00007.segments.npy").write_bytes(b"partial")
    plan_stage(sources(), SPEC, f"s3://{BUCKET}/half", windows_per_chunk=50)
    plan_stage(sources(), SPEC, tmp_path / "half", windows_per_chunk=50)
    assert s3_files(s3, f"{BUCKET}/half") == local_files(tmp_path / "half")
    assert sorted(local_files(tmp_path / "half")) == [
        "chunks/00000.segments.npy",
        "chunks/00000.sequences.npy",
        "plan.json",
        "summary.json",
        "windows.npy",
    ]
    # Anything else in the folder is the user's: refused, untouched.
    s3.pipe_file(f"{BUCKET}/mine/keep.txt", b"user data")
    with pytest.raises(ValueError, match=re.escape(f"s3://{BUCKET}/mine: exists and is not a plan folder") + ".*keep"):
        plan_stage(sources(), SPEC, f"s3://{BUCKET}/mine")
    assert s3.cat_file(f"{BUCKET}/mine/keep.txt") == b"user data"


def batches(out: str, tok, workers: int) -> list[dict[str, torch.Tensor]]:
    return list(StageLoader(out, STAGE, tokenizer=tok, num_workers=workers, prefetch_factor=2))


def test_mixer_build_to_s3_trains_as_a_local_build(tmp_path: Path, tmp_path_factory, tiny_tokenizer, s3_env) -> None:
    # The loader tests' local build (their sources, manifest and pipeline, without Ray); the same manifest built by
    # `mixer build` into the bucket, in a subprocess whose Ray workers find the server through AWS_ENDPOINT_URL.
    local = built_stage(tmp_path_factory, tiny_tokenizer)
    url = f"s3://{BUCKET}/run"
    cmd = [sys.executable, "-m", "mixer.cli", "build", str(local.parent / "manifest.yaml"), "--out", url]
    env = {**os.environ, **s3_env, **CLUSTER_ENV}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stage {STAGE}: 32 sequences" in done.stdout, done.stdout

    # The stage plan is in the bucket, byte for byte the local one, and so are the length index's values;
    # stage.json differs only by where its length index lives; no temp-named object is left.
    s3 = s3fs.S3FileSystem()
    stored = s3_files(s3, f"{BUCKET}/run")
    assert not [k for k in stored if is_temp_name(k.rsplit("/", 1)[-1]) or k.endswith(".tmp")]
    plan_files = local_files(local / "stages" / STAGE / "plan")
    assert {k: stored[f"stages/{STAGE}/plan/{k}"] for k in plan_files} == plan_files
    remote_meta, local_meta = read_stage(url, STAGE).model_dump(), read_stage(str(local), STAGE).model_dump()
    remote_lengths, local_lengths = remote_meta.pop("lengths"), local_meta.pop("lengths")
    assert remote_meta.pop("shards") == {n: f"{url}/sources/{n}" for n in ("vqa", "chat")}
    assert local_meta.pop("shards") == {n: f"{local}/sources/{n}" for n in ("vqa", "chat")}
    assert remote_meta == local_meta and sorted(remote_lengths) == sorted(local_lengths) == ["chat", "vqa"]
    for name, where in remote_lengths.items():
        assert where.startswith(f"{url}/lengths/") and where.endswith(f"/{name}/lengths.parquet"), where
        assert pq.read_table(where).equals(pq.read_table(local_lengths[name])), name

    tok = load_tokenizer(str(tiny_tokenizer))
    got, want = batches(url, tok, workers=2), batches(str(local), tok, workers=0)
    assert len(got) == len(want) == 16  # 8 steps × 2 micro batches of 2 sequences
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"micro batch {i} differs"
    assert sum(int(b["pixel_values"].shape[0]) for b in got) > 0

    # `mixer inspect` reads the bucket as it reads the local build, and writes its plot into the bucket.
    from mixer.inspect import inspect_build
    from mixer.inspect.plots import PLOT_NAME, write_plots

    remote_report, local_report = inspect_build(url), inspect_build(str(local))
    for field in ("sources", "num_sequences", "num_tokens", "packing_efficiency", "worst_window_deviation_pp"):
        assert remote_report["stages"][STAGE][field] == local_report["stages"][STAGE][field], field
    assert remote_report["stages"][STAGE]["lengths"] == local_report["stages"][STAGE]["lengths"]
    plot = write_plots(remote_report)[STAGE]
    assert plot == f"{url}/stages/{STAGE}/{PLOT_NAME}" and s3.cat_file(plot).startswith(b"\x89PNG")
