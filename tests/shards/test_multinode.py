"""Multi-node builds: `mixer build --ray-address` on a Ray cluster of several nodes on 127.0.0.1.

The cluster is `tests.support.harness.LoopbackCluster`: `ray.cluster_utils.Cluster` in a helper process, because
on Linux `ray start` cannot start a second node on loopback (for a worker node it rewrites 127.0.0.1 to the host's
routable IP unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with that variable it refuses worker nodes; see the module's
docstring). The nodes are the same GCS / raylet / worker processes `ray start` runs.

Which node ran a shard task is read from the network, not from Ray: the fault server records the process that sent
each image request, and the node is the raylet among that process's ancestors.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from mixer.build import build
from mixer.manifest import load_manifest
from tests.support.harness import LOOPBACK_IPS, Fetch, LoopbackCluster, RecordingFaultServer, shards_manifest

pytestmark = pytest.mark.slow

ROWS, PER_SHARD = 40, 4
_ROW = re.compile(r"[?&]i=(\d+)")


CC3M = {"cc3m": {"kind": "cc3m-tsv", "paths": "in.tsv"}}


@pytest.fixture(scope="module")
def served(images):
    # /hold answers after 0.5 s (n is never reached): every shard task takes seconds, so several are in flight.
    with RecordingFaultServer(images, hold_seconds=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, served: RecordingFaultServer) -> Path:
    wd = tmp_path_factory.mktemp("multinode")
    lines = [f"caption {i}\t{served.url}/hold/img{i % 24}.jpg?n=999&i={i}" for i in range(ROWS)]
    (wd / "in.tsv").write_text("\n".join(lines) + "\n")
    (wd / "tok").mkdir()
    (wd / "m.yaml").write_text(shards_manifest("multinode", CC3M, PER_SHARD))
    return wd


@pytest.fixture(scope="module")
def local_build(workdir: Path, ray_local) -> Path:
    """The same manifest built on the embedded local Ray (no address): the reference for every cluster build."""
    build(load_manifest(workdir / "m.yaml"), out=str(workdir / "local"))
    return workdir / "local"


@pytest.fixture(scope="module")
def cluster():
    with LoopbackCluster(workers=1, cpus_per_node=1) as c:
        yield c


def source_files(out: Path) -> dict[str, bytes]:
    """Every file of the source folder by name, but the per-shard stats (their timings differ run to run)."""
    folder = out / "sources/cc3m"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.endswith("_stats.json")}


def stats_without_timings(out: Path) -> dict[str, dict]:
    stats = {}
    for p in sorted((out / "sources/cc3m").glob("*_stats.json")):
        stats[p.name] = {k: v for k, v in json.loads(p.read_text()).items() if k != "timings"}
    return stats


def start_build(workdir: Path, out: str, cluster: LoopbackCluster) -> tuple[subprocess.Popen, Path]:
    log = workdir / f"{out}.log"
    cmd = [sys.executable, "-m", "mixer.cli", "build", str(workdir / "m.yaml"), "--out", str(workdir / out)]
    cmd += ["--ray-address", cluster.address, "--shards-only"]
    with open(log, "w") as f:  # a file, not a pipe: nobody reads a pipe while the test waits on the server
        proc = subprocess.Popen(cmd, cwd=workdir, env=cluster.env, stdout=f, stderr=subprocess.STDOUT)
    return proc, log


def finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=300)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert f"cc3m: {ROWS} rows in {ROWS // PER_SHARD} shards (0 reused): success {ROWS}" in output, output
    return output


def shard_of(fetch: Fetch) -> int:
    m = _ROW.search(fetch.target)
    assert m, fetch.target
    return int(m.group(1)) // PER_SHARD


def nodes_by_shard(fetches: list[Fetch], cluster: LoopbackCluster) -> dict[int, set[str | None]]:
    found: dict[int, set[str | None]] = defaultdict(set)
    for f in fetches:
        found[shard_of(f)].add(cluster.node_of(f.pids))
    return dict(found)


def test_build_spreads_over_both_nodes_and_equals_local_build(
    workdir: Path, served: RecordingFaultServer, local_build: Path, cluster: LoopbackCluster
) -> None:
    start = len(served.fetches)
    # Hold every image request from the cluster until each node has one in flight: then shard tasks run on both
    # nodes at once, and the check of listening sockets below sees every worker and the driver alive.
    served.block(lambda f: cluster.node_of(f.pids) is not None)
    proc, log = start_build(workdir, "two-node", cluster)
    try:
        served.wait_for(lambda fs: {cluster.node_of(f.pids) for f in fs[start:]} >= {"head", "worker1"}, 240)
        sockets = cluster.listening(extra_pids=[proc.pid])
    finally:
        served.block(None)
    finish(proc, log)

    gcs_port = int(cluster.address.rsplit(":", 1)[1])
    assert gcs_port in {port for _, _, port in sockets}, sockets
    assert [s for s in sockets if s[1] not in LOOPBACK_IPS] == [], "a Ray process listens beyond 127.0.0.1"

    shards = nodes_by_shard(served.fetches[start:], cluster)
    assert sorted(shards) == list(range(ROWS // PER_SHARD))
    assert all(len(nodes) == 1 for nodes in shards.values()), f"a shard fetched from two nodes: {shards}"
    assert set().union(*shards.values()) == {"head", "worker1"}, shards

    assert source_files(workdir / "two-node") == source_files(local_build)
    assert stats_without_timings(workdir / "two-node") == stats_without_timings(local_build)


def test_worker_node_killed_mid_build_still_gives_the_local_build(
    workdir: Path, served: RecordingFaultServer, local_build: Path, cluster: LoopbackCluster
) -> None:
    victim = cluster.add_worker()
    start = len(served.fetches)
    # The victim's requests never get an answer before it dies, so its shard tasks are surely mid-download.
    served.block(lambda f: cluster.node_of(f.pids) == victim)
    proc, log = start_build(workdir, "killed", cluster)
    try:
        seen = served.wait_for(lambda fs: any(cluster.node_of(f.pids) == victim for f in fs[start:]), 240)
        cluster.kill_node(victim)
    finally:
        served.block(None)
    finish(proc, log)

    on_victim = {shard_of(f) for f in seen[start:] if cluster.node_of(f.pids) == victim}
    shards = nodes_by_shard(served.fetches[start:], cluster)
    redone = {s for s, nodes in shards.items() if nodes - {victim}}
    assert on_victim and on_victim <= redone, f"shards {on_victim} of the killed node were not redone: {shards}"

    assert source_files(workdir / "killed") == source_files(local_build)
    assert stats_without_timings(workdir / "killed") == stats_without_timings(local_build)
