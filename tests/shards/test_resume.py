"""Kill-and-resume: SIGKILL a `mixer build` mid-shard, rerun it, and get exactly an uninterrupted build's shards.

No process of the killed build outlives it (the Ray workers die with their raylet), so none writes after the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from mixer.build import build
from mixer.manifest import load_manifest
from shards.http_faults import FaultServer
from shards.testing import shards_manifest

CC3M = {"cc3m": {"kind": "cc3m-tsv", "paths": "in.tsv"}}


def mixer_build(workdir: Path, out: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    cmd = [
        sys.executable,
        "-m",
        "mixer.cli",
        "build",
        str(workdir / "m.yaml"),
        "--out",
        str(workdir / out),
        "--shards-only",
    ]
    return subprocess.Popen(
        cmd, cwd=workdir, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def shard_files(out: Path) -> dict[str, bytes]:
    src = out / "sources/cc3m"
    return {
        p.name: p.read_bytes()
        for p in sorted(src.iterdir())
        if p.suffix in (".tar", ".parquet") and not p.name.startswith(".") and "stats" not in p.name
    }


def test_sigkill_mid_build_then_resume_equals_uninterrupted(tmp_path: Path, images, ray_local) -> None:
    with FaultServer(images, hold_seconds=0.4) as server:
        # /hold answers after 0.4 s (n is never reached): a slow build with many shards in flight to kill.
        lines = [f"caption {i}\t{server.url}/hold/img{i % 24}.jpg?n=999&i={i}" for i in range(48)]
        (tmp_path / "in.tsv").write_text("\n".join(lines) + "\n")
        (tmp_path / "tok").mkdir()
        (tmp_path / "m.yaml").write_text(shards_manifest("resume", CC3M, 4))

        build(load_manifest(tmp_path / "m.yaml"), out=str(tmp_path / "ref"))  # the uninterrupted reference

        victim = mixer_build(tmp_path, "out")
        status_dir = tmp_path / "out/sources/cc3m"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(status_dir.glob("*_status.parquet")):
            time.sleep(0.05)
        time.sleep(0.5)
        tree = [psutil.Process(victim.pid), *psutil.Process(victim.pid).children(recursive=True)]
        assert any(p.name() == "raylet" for p in tree) and any(p.name() == "ray::_shard_task" for p in tree), tree
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        # The workers have process groups of their own: they die with their raylet (see shards.cluster.die_with_node).
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == [], "a process of the killed build lives on"
        partial = shard_files(tmp_path / "out")
        reference = shard_files(tmp_path / "ref")
        done = len(list(status_dir.glob("*_status.parquet")))
        assert 0 < done < 12, f"the kill should land mid-build ({done} of 12 shards complete)"
        for name, data in partial.items():  # whatever carries a final name is complete and final
            assert data == reference[name], f"{name} is visible under its final name but differs"

        again = mixer_build(tmp_path, "out")
        out_again, _ = again.communicate(timeout=300)
        assert again.returncode == 0, out_again
        # Nothing of the killed build wrote after the kill: the rerun reuses exactly the shards complete at the kill.
        assert f"48 rows in 12 shards ({done} reused)" in out_again, out_again

    assert shard_files(tmp_path / "out") == reference
    keys = lambda d: sorted(pq.read_table(d / "sources/cc3m/index.parquet").column("key").to_pylist())  # noqa: E731
    assert keys(tmp_path / "out") == keys(tmp_path / "ref")
    assert not [p for p in status_dir.iterdir() if p.name.startswith(".")], "temporary files left behind"
