"""The embedded Ray cluster listens on 127.0.0.1 only; `--ray-address` fails fast and joins token-auth clusters."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import ray
from ray._private import parameter as ray_parameter

from shards.cluster import (
    AUTH_MODE_ENV,
    AUTH_TOKEN_ENV,
    AUTH_TOKEN_PATH_ENV,
    CONNECT_TIMEOUT_ENV,
    auth_env,
    embedded_auth_env,
    refusal,
    split_address,
)
from shards.testing import LoopbackCluster, shards_manifest

CC3M = {"cc3m": {"kind": "cc3m-tsv", "paths": "in.tsv"}}


def cluster_processes() -> list[psutil.Process]:
    """This driver, every process the embedded node started (GCS, raylet, monitors, ...) and all their children."""
    node = ray._private.worker._global_node
    roots = [psutil.Process()]
    for infos in node.all_processes.values():
        roots += [psutil.Process(info.process.pid) for info in infos if info.process.poll() is None]
    found = {p.pid: p for p in roots}
    for root in roots[1:]:
        found.update({p.pid: p for p in root.children(recursive=True)})
    return list(found.values())


def listening_sockets(procs: list[psutil.Process]) -> list[tuple[str, str, str, int]]:
    """(process, tcp|udp, address, port) of every listening TCP socket and every bound, unconnected UDP socket."""
    out = []
    for proc in procs:
        try:
            name, conns = proc.name(), proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
                out.append((name, "tcp", c.laddr.ip, c.laddr.port))
            elif c.type == socket.SOCK_DGRAM and not c.raddr:
                out.append((name, "udp", c.laddr.ip, c.laddr.port))
    return sorted(out)


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_is_loopback_table() -> None:
    cases = {"127.0.0.1": True, "::ffff:127.0.0.1": True, "::1": True, "0.0.0.0": False, "::": False}
    cases |= {"192.0.2.2": False, "10.0.0.5": False, "::ffff:10.0.0.5": False}
    assert {ip: is_loopback(ip) for ip in cases} == cases


def test_embedded_cluster_listens_on_loopback_only(ray_local) -> None:
    @ray.remote
    def pid() -> int:
        return os.getpid()

    worker_pids = set(ray.get([pid.remote() for _ in range(4)]))  # workers up, so their sockets exist too
    procs = cluster_processes()
    sockets = listening_sockets(procs)
    names = {name for name, *_ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the check saw the cluster's servers
    assert worker_pids & {p.pid for p in procs}, "the workers are not among the listed processes"
    assert [s for s in sockets if not is_loopback(s[2])] == [], "an embedded Ray process listens beyond loopback"
    # ray.init enabled token auth with the token connect() put in the environment, not a file in ~/.ray.
    assert os.environ.get(AUTH_TOKEN_ENV) and os.environ.get(AUTH_MODE_ENV) == "token"


def test_embedded_cluster_starts_no_log_or_autoscaler_monitor(ray_local) -> None:
    # shards.cluster.LEAN_HEAD: the head runs without the two monitors, and everything else Ray needs still runs
    started = set(ray._private.worker._global_node.all_processes)
    assert {"gcs_server", "raylet"} <= started, started
    assert not started & {"log_monitor", "monitor"}, started
    scripts = [arg for p in cluster_processes() for arg in p.cmdline() if arg.endswith(".py")]
    assert not [s for s in scripts if s.endswith("monitor.py")], scripts  # log_monitor.py, autoscaler monitor.py
    assert ray_parameter.RayParams().include_log_monitor is None  # Ray's own default is back after the start


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_with_nothing_there_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "in.tsv").write_text("a caption\thttp://127.0.0.1:9/x.jpg\n")
    (tmp_path / "tok").mkdir()
    (tmp_path / "m.yaml").write_text(shards_manifest("noray", CC3M, 4))
    address = f"127.0.0.1:{free_loopback_port()}"
    cmd = [sys.executable, "-m", "mixer.cli", "build", "m.yaml", "--ray-address", address, "--shards-only"]
    env = {**os.environ, CONNECT_TIMEOUT_ENV: "3"}
    # The subprocess timeout only keeps a regression (Ray's own retries: minutes) from hanging the suite.
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"--ray-address {address}: no Ray cluster answers"), done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379)),
        ("ray://head.internal:10001", ("head.internal", 10001)),
        ("[::1]:6379", ("::1", 6379)),
        ("auto", None),
        ("head:port", None),
    ],
)
def test_split_address(address: str, expected: tuple[str, int] | None) -> None:
    assert split_address(address) == expected


def test_auth_env_for_a_joined_cluster() -> None:
    # A token in the environment means token mode (Ray 2.60 never infers it for an explicit address).
    assert auth_env({AUTH_TOKEN_ENV: "t"}) == {AUTH_MODE_ENV: "token"}
    assert auth_env({AUTH_TOKEN_PATH_ENV: "/secrets/ray"}) == {AUTH_MODE_ENV: "token"}
    # The user's explicit mode wins; no token given: the cluster may have no auth, so nothing is forced.
    assert auth_env({AUTH_TOKEN_ENV: "t", AUTH_MODE_ENV: "disabled"}) == {}
    assert auth_env({}) == {}


def test_refusals_are_one_line_naming_the_address() -> None:
    auth = ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")
    auth.__cause__ = ray.exceptions.AuthenticationError("RPC error: InvalidAuthToken: token is missing or incorrect")
    no_token = ray.exceptions.AuthenticationError(
        "Token authentication is enabled but no authentication token was found"
    )
    other = ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379\nmore")
    for error in (auth, no_token):
        line = refusal("127.0.0.1:6379", error)
        assert line.startswith("--ray-address 127.0.0.1:6379: the cluster refused this driver's auth token"), line
        assert "RAY_AUTH_TOKEN" in line and "\n" not in line
    expected = "--ray-address 127.0.0.1:6379: cannot join the Ray cluster there: Failed to connect to Ray cluster at "
    assert refusal("127.0.0.1:6379", other) == expected + "127.0.0.1:6379"


def test_embedded_auth_env_keeps_the_users_choice() -> None:
    fresh = embedded_auth_env({})
    assert set(fresh) == {AUTH_TOKEN_ENV} and len(fresh[AUTH_TOKEN_ENV]) == 64
    assert embedded_auth_env({}) != fresh  # a new token per build
    for env in ({AUTH_MODE_ENV: "disabled"}, {AUTH_TOKEN_ENV: "mine"}, {AUTH_TOKEN_PATH_ENV: "/x"}):
        assert embedded_auth_env(env) == {}


def llava_text_rows(path: Path, n: int) -> None:
    rows = [
        {"id": f"t{i}", "conversations": [{"from": "human", "value": f"q {i}"}, {"from": "gpt", "value": f"a {i}"}]}
        for i in range(n)
    ]
    path.write_text(json.dumps(rows))


@pytest.mark.slow
def test_build_joins_a_token_authenticated_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(32)
    monkeypatch.setenv(AUTH_MODE_ENV, "token")  # the head (GCS, raylet) starts in token mode with this token
    monkeypatch.setenv(AUTH_TOKEN_ENV, token)
    llava_text_rows(tmp_path / "chat.json", 6)
    (tmp_path / "tok").mkdir()
    (tmp_path / "m.yaml").write_text(shards_manifest("auth", {"chat": {"kind": "llava-json", "paths": "chat.json"}}, 4))
    with LoopbackCluster(workers=0, cpus_per_node=1) as cluster:
        gcs = [p for p in cluster.processes() if p.name() == "gcs_server"]
        assert [p.environ().get(AUTH_MODE_ENV) for p in gcs] == ["token"], "the head must require a token"
        # What docs/cluster.md tells a user to export: the token only; `mixer build` adds RAY_AUTH_MODE=token.
        env = {k: v for k, v in cluster.env.items() if k != AUTH_MODE_ENV} | {AUTH_TOKEN_ENV: token}
        cmd = [sys.executable, "-m", "mixer.cli", "build", "m.yaml", "--ray-address", cluster.address, "--shards-only"]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        # Another token: refused, in one line (Ray's connect retries shortened: it would try for about 20 s).
        wrong = env | {AUTH_TOKEN_ENV: secrets.token_hex(32), "RAY_gcs_server_port_wait_time_s": "2"}
        refused = subprocess.run(cmd, cwd=tmp_path, env=wrong, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chat: 6 rows in 2 shards (0 reused): success 6" in done.stdout, done.stdout
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]  # Ray's own C++ warnings go to stderr before it
    assert last.startswith(f"--ray-address {cluster.address}: the cluster refused this driver's auth token"), last
