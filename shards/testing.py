"""Test harnesses that need real processes, all on 127.0.0.1: a multi-node Ray cluster, a recording fault server, S3.

`LoopbackCluster` runs a Ray head and worker nodes; `RecordingFaultServer` records which process fetched each URL
(so a test can tell which node ran a shard task) and can hold chosen requests; `moto_s3` serves an S3 bucket.

Why `ray.cluster_utils.Cluster` in a helper process rather than `ray start` twice: on Linux, `ray start` for a
worker node rewrites `127.0.0.1` in both `--address` and `--node-ip-address` to the host's routable IP, unless
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, and with that variable it refuses to start a worker node at all. `Cluster`
starts the same GCS, raylet and worker processes per node without that CLI check, and with the variable set every
node keeps 127.0.0.1. The helper process (`python -m shards.testing`) owns the cluster in its own session, so the
test process's own Ray is untouched and teardown can kill exactly the processes of that session.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil
import yaml

from shards.http_faults import FaultServer, _Handler

# Drivers and nodes on one host need it: without it Ray rewrites 127.0.0.1 to the host's routable address.
CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK_IPS = frozenset({"127.0.0.1", "::ffff:127.0.0.1"})
_STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class NodeInfo:
    """One node of a `LoopbackCluster`: its name (`head`, `worker1`, …), Ray node id and raylet process id."""

    name: str
    node_id: str
    raylet_pid: int


class LoopbackCluster:
    """A Ray head node and `workers` worker nodes on 127.0.0.1, `cpus_per_node` CPUs each, as a context manager.

    `address` is the GCS address to pass as `--ray-address`; drivers must run with `env` (it carries
    `CLUSTER_ENV`). `kill_node` SIGKILLs a node's raylet and every process under it, as a lost host would.
    """

    def __init__(self, workers: int = 1, cpus_per_node: int = 1, start_timeout: float = 240.0) -> None:
        self.workers, self.cpus_per_node, self.start_timeout = workers, cpus_per_node, start_timeout
        self.address = ""
        self.nodes: dict[str, NodeInfo] = {}
        self.env = {**os.environ, **CLUSTER_ENV}
        self._proc: subprocess.Popen[str] | None = None
        self._tmp = ""

    def __enter__(self) -> LoopbackCluster:
        # Short base folder: Ray's unix socket paths live under it and must stay under 108 bytes.
        self._tmp = tempfile.mkdtemp(prefix="tmx-", dir="/tmp")
        cmd = [sys.executable, "-m", "shards.testing", self._tmp, str(self.workers), str(self.cpus_per_node)]
        self._proc = subprocess.Popen(
            cmd, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            hello = self._reply(self.start_timeout)
        except BaseException:
            self.__exit__()
            raise
        self.address = hello["address"]
        for node in hello["nodes"]:
            self.nodes[node["name"]] = NodeInfo(**node)
        return self

    def add_worker(self) -> str:
        """Start one more worker node and wait until it has joined; returns its name."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write("add\n")
        self._proc.stdin.flush()
        node = NodeInfo(**self._reply(self.start_timeout)["node"])
        self.nodes[node.name] = node
        return node.name

    def _reply(self, timeout: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"cluster helper gave no answer within {timeout:.0f} s (exit code {self._proc.poll()})")
        return json.loads(line)

    def processes(self) -> list[psutil.Process]:
        """Every live process of the cluster: the helper's session (Ray keeps it for GCS, raylets and workers)."""
        if self._proc is None:
            return []
        sid = self._proc.pid  # start_new_session: the helper leads its session
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def listening(self, extra_pids: Iterable[int] = ()) -> list[tuple[str, str, int]]:
        """(process name, address, port) of every listening TCP socket of the cluster and of `extra_pids`' trees."""
        procs = {p.pid: p for p in self.processes()}
        for pid in extra_pids:
            try:
                root = psutil.Process(pid)
                procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
            except psutil.NoSuchProcess:
                continue
        out = []
        for proc in procs.values():
            try:
                conns = proc.net_connections(kind="tcp")
                name = proc.name()
            except psutil.Error:
                continue
            out += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
        return sorted(out)

    def node_of(self, pids: Iterable[int]) -> str | None:
        """The node whose raylet is among `pids` (a process and its ancestors, see `Fetch.pids`), else None."""
        by_raylet = {n.raylet_pid: n.name for n in self.nodes.values()}
        return next((by_raylet[p] for p in pids if p in by_raylet), None)

    def kill_node(self, name: str) -> None:
        """SIGKILL a worker node's raylet and everything under it (its workers and agents) at once."""
        if name == "head":
            raise ValueError("kill_node: the head node holds the GCS; only worker nodes can be killed")
        raylet = psutil.Process(self.nodes[name].raylet_pid)
        _kill_all([*raylet.children(recursive=True), raylet])

    def __exit__(self, *exc: object) -> None:
        # SIGKILL, not `ray stop` (which stops every Ray on the machine) nor a graceful stop (tens of seconds here):
        # the cluster's processes are exactly the helper's session, orphaned workers included.
        for _ in range(5):
            procs = self.processes()
            if not procs:
                break
            _kill_all(procs)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        shutil.rmtree(self._tmp, ignore_errors=True)


def _kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL every process, then wait until each is gone or a zombie (their parent, not us, reaps them)."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    for proc in procs:
        while time.monotonic() < deadline:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)


def _serve_cluster(tmp: str, workers: int, cpus: int) -> None:
    """The helper process: start the cluster, print its address and nodes, add a worker node on each `add` line."""
    replies = os.fdopen(os.dup(1), "w")  # the reply channel; anything else written to stdout goes to stderr
    os.dup2(2, 1)
    os.environ.update(CLUSTER_ENV)
    os.environ["RAY_TMPDIR"] = tmp  # Cluster writes its address file under $RAY_TMPDIR/ray, not the shared /tmp/ray
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    from ray.cluster_utils import Cluster

    common = {"num_cpus": cpus, "temp_dir": tmp, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**common, "include_dashboard": False})
    names = {cluster.head_node: "head"}

    def describe(node: Any) -> dict[str, Any]:
        return {"name": names[node], "node_id": node.node_id, "raylet_pid": node.all_processes["raylet"][0].process.pid}

    def add() -> Any:
        node = cluster.add_node(**common)
        names[node] = f"worker{len(names)}"
        return node

    for _ in range(workers):
        add()
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "nodes": [describe(n) for n in names]}), file=replies, flush=True)
    for line in sys.stdin:  # the test process kills the whole session when done (`LoopbackCluster.__exit__`)
        if line.strip() == "add":
            node = add()
            print(json.dumps({"node": describe(node)}), file=replies, flush=True)


@dataclass(frozen=True)
class Fetch:
    """One request to a `RecordingFaultServer`.

    `target` is the path with its query; `pids` the client process id followed by its ancestors' ids, taken while
    the connection was open (empty when the client could not be found).
    """

    target: str
    pids: tuple[int, ...]


def _client_pids(client_port: int, server_port: int) -> tuple[int, ...]:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.pid and conn.raddr and conn.laddr.port == client_port and conn.raddr.port == server_port:
            try:
                return (conn.pid, *(p.pid for p in psutil.Process(conn.pid).parents()))
            except psutil.NoSuchProcess:
                return (conn.pid,)
    return ()


class RecordingFaultServer(FaultServer):
    """A `FaultServer` that records which process sent every request (`fetches`), and can hold chosen requests.

    `block(predicate)`: from now on, requests whose `Fetch` matches wait (before any reply) until `block(None)` or
    the server stops; a deterministic way to keep one node's shard task mid-download.
    """

    def __init__(self, images: dict[str, bytes], **kwargs: float) -> None:
        super().__init__(images, **kwargs)
        self.fetches: list[Fetch] = []
        self._cond = threading.Condition()
        self._blocked: Callable[[Fetch], bool] | None = None

    def __enter__(self) -> RecordingFaultServer:
        super().__enter__()
        assert self._server is not None
        self._server.RequestHandlerClass = type("_BoundRecordingHandler", (_RecordingHandler,), {"recorder": self})
        return self

    def arrive(self, target: str, client_port: int) -> None:
        """Record one request (called by the handler thread) and hold it while it is blocked."""
        assert self._server is not None
        fetch = Fetch(target, _client_pids(client_port, self._server.server_address[1]))
        with self._cond:
            self.fetches.append(fetch)
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._is_blocked(fetch))

    def _is_blocked(self, fetch: Fetch) -> bool:
        return self._blocked is not None and self._blocked(fetch) and not self.state.stopping.is_set()

    def block(self, predicate: Callable[[Fetch], bool] | None) -> None:
        with self._cond:
            self._blocked = predicate
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Fetch]], bool], timeout: float) -> list[Fetch]:
        """Wait until `predicate(fetches)` holds; returns a copy of the fetches then. TimeoutError after `timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.fetches), timeout=timeout):
                raise TimeoutError(f"no such request within {timeout:.0f} s; {len(self.fetches)} requests so far")
            return list(self.fetches)

    def __exit__(self, *exc: object) -> None:
        self.state.stopping.set()
        self.block(None)
        super().__exit__(*exc)


class _RecordingHandler(_Handler):
    recorder: RecordingFaultServer  # set on the per-server subclass made in `RecordingFaultServer.__enter__`

    def do_GET(self) -> None:
        self.recorder.arrive(self.path, self.client_address[1])
        super().do_GET()


S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """An S3-compatible server (moto) on 127.0.0.1 holding one empty bucket.

    Yields the environment that points boto-based clients (s3fs, and so fsspec's `s3://`) at it:
    `AWS_ENDPOINT_URL`, test credentials and a region.
    """
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {**S3_TEST_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        s3 = s3fs.S3FileSystem(
            key=env["AWS_ACCESS_KEY_ID"],
            secret=env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=env["AWS_ENDPOINT_URL"],
            skip_instance_cache=True,
        )
        s3.mkdir(bucket)
        yield env
    finally:
        server.stop()


if __name__ == "__main__":
    _serve_cluster(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))


def shards_manifest(name: str, sources: dict[str, dict], per_shard: int) -> str:
    """A manifest for shard-building tests: the given sources and small images, downloads allowed on 127.0.0.1.

    It also declares the minimal model and stage every manifest must have; a `--shards-only` build never loads them.
    """
    doc = {
        "name": name,
        "output": "out",
        "data_root": ".",
        "sources": sources,
        "shards": {
            "samples_per_shard": per_shard,
            "image": {"size": 32},
            "download": {"threads": 2, "retries": 0, "allow_hosts": ["127.0.0.1"]},
        },
        "model": {
            "vision": {"config": {"model_type": "clip_vision_model", "patch_size": 16}},
            "llm": {"config": {"model_type": "llama"}},
            "tokenizer": "./tok",
        },
        "stages": [
            {
                "name": "s",
                "mixture": dict.fromkeys(sources, 1),
                "size": {"steps": 1},
                "seq_len": 512,
                "trains": ["connector"],
                "optimizer": {"lr": 0.001},
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)
