"""Connect to Ray: an embedded local cluster on 127.0.0.1 by default, or an existing cluster by address.

The embedded cluster binds every socket to loopback: Ray 2.60 listens on the node IP it is given (GCS, raylet, object
manager, workers; the dashboard agent, its metrics exporter and the runtime-env agent switch to 127.0.0.1 when that
IP is a loopback one), and the dashboard is off. A joined cluster is the user's: its address is checked to answer
before Ray is asked (Ray itself retries an address where nothing listens for many minutes).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray._private import parameter as ray_parameter
from ray._private import ray_constants

LOOPBACK = "127.0.0.1"
# Ray's own variables: the auth mode and where the token comes from (env first, then a file, then ~/.ray/auth_token).
AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
# How long `--ray-address` may stay silent before the build gives up (a head node may still be starting).
CONNECT_TIMEOUT_ENV, CONNECT_TIMEOUT_S = "TINYMIX_RAY_CONNECT_TIMEOUT_S", 25.0


class ClusterUnreachable(ValueError):
    """`--ray-address` names a place where no Ray cluster answers (bad user input, reported in one line)."""


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per process.

    address None: a fresh local cluster bound to 127.0.0.1 (`address="local"`, so a stale cluster file on the
    machine is never joined), token-authenticated with a random token held only in this process's environment (so
    other local users cannot submit work to it, and nothing is written to ~/.ray). Otherwise the address must answer
    within `CONNECT_TIMEOUT_S` (or `$TINYMIX_RAY_CONNECT_TIMEOUT_S`), else `ClusterUnreachable`; then
    `ray.init(address=...)` joins the cluster as it is (see `auth_env` for token-authenticated clusters).
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    common = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
    if address:
        extra = auth_env(os.environ)
        if extra:
            os.environ.update(extra)
            # Ray read RAY_AUTH_MODE into its config at import; reload it (what ray.init does when it enables auth).
            ray._raylet.Config.initialize("")
        wait_until_reachable(address, float(os.environ.get(CONNECT_TIMEOUT_ENV, CONNECT_TIMEOUT_S)))
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:  # the latter: token mode, no token
            raise ClusterUnreachable(refusal(address, e)) from None
        return
    # On Linux Ray rewrites a loopback node IP to the host's routable one unless this is off. The cluster's processes
    # read the variable when they start; this process imported ray already, and Ray reads it at import, so its
    # constant is switched too (checked by tests/shards/test_cluster.py, which lists every listening socket).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    # Ray starts workers at nice 15; on a shared workstation that hands the build's CPU to everything else
    # (bench/shards measured 0.98x vs 1.33x img2dataset for the same build).
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.update(embedded_auth_env(os.environ))
    with _lean_head():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address=LOOPBACK, **common)


# Head processes an embedded, fixed-size, logs-not-streamed cluster does not need: the log monitor (it streams
# workers' output to the driver, which `log_to_driver=False` turns off anyway) and the autoscaler monitor (nothing to
# scale). `ray.init` has no switch for them, only the RayParams it builds does. Measured with `connect(num_cpus=2)`
# on the shared 2-core machine: 4.4 -> 3.4 CPU-s for the cluster to come up, 15.5 -> 10.7 s of wall time.
LEAN_HEAD = {"include_log_monitor": False, "no_monitor": True}


@contextlib.contextmanager
def _lean_head() -> Iterator[None]:
    """While `ray.init` starts the embedded cluster, its RayParams default to `LEAN_HEAD`."""
    cls = ray_parameter.RayParams
    known = inspect.signature(cls.__init__).parameters
    if not all(k in known for k in LEAN_HEAD):  # another Ray version: start it as Ray would
        yield
        return
    original = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**LEAN_HEAD, **kwargs})

    cls.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__init__ = original  # type: ignore[method-assign]


def embedded_auth_env(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The variables the embedded cluster starts with: a fresh auth token unless the user chose a mode or token.

    Ray 2.60 turns token auth on for a new local cluster and, lacking a token, writes one to ~/.ray/auth_token; a
    token in the environment (inherited by the cluster's processes) avoids that file. A user's own `RAY_AUTH_MODE`
    or token is kept.
    """
    if env.get(AUTH_MODE_ENV) or env.get(AUTH_TOKEN_ENV) or env.get(AUTH_TOKEN_PATH_ENV):
        return {}
    # Only the token: with RAY_AUTH_MODE unset, ray.init turns token mode on itself (and reloads its config).
    return {AUTH_TOKEN_ENV: secrets.token_hex(32)}


def auth_env(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """What a driver joining `--ray-address` adds to its environment for a token-authenticated cluster.

    Ray 2.60 never turns token auth on by itself for an explicit address: a driver that has the token
    (`RAY_AUTH_TOKEN` or `RAY_AUTH_TOKEN_PATH`) but not `RAY_AUTH_MODE=token` gets `InvalidAuthToken` twenty times.
    A token given in the environment is taken as the intent, so `RAY_AUTH_MODE=token` is set with it; a token only
    in ~/.ray/auth_token is not (the cluster may have no auth), and an explicit `RAY_AUTH_MODE` always wins.
    """
    if env.get(AUTH_MODE_ENV):
        return {}
    if env.get(AUTH_TOKEN_ENV) or env.get(AUTH_TOKEN_PATH_ENV):
        return {AUTH_MODE_ENV: "token"}
    return {}


def refusal(address: str, error: BaseException) -> str:
    """The one line for a cluster that answered but would not let the driver join."""
    cause = f"{error} {error.__cause__ or ''}"
    if isinstance(error, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in cause:
        return (
            f"--ray-address {address}: the cluster refused this driver's auth token (InvalidAuthToken); export "
            f"{AUTH_TOKEN_ENV} (or {AUTH_TOKEN_PATH_ENV}) with the head's token (`ray get-auth-token` there)"
        )
    return f"--ray-address {address}: cannot join the Ray cluster there: {str(error).splitlines()[0]}"


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a GCS `HOST:PORT` or Ray Client `ray://HOST:PORT` address; None for `auto` and the like."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def wait_until_reachable(address: str, timeout: float) -> None:
    """Return once something accepts TCP connections at `address`; raise `ClusterUnreachable` after `timeout` s.

    Connection attempts repeat (a head node may be starting), each bounded, so the whole wait is about `timeout`.
    """
    target = split_address(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(target, timeout=max(0.1, min(5.0, left))):
                return
        except OSError as e:
            last = e
        if time.monotonic() + 1.0 > deadline:
            reason = last.strerror or type(last).__name__ if last else "no answer"
            raise ClusterUnreachable(
                f"--ray-address {address}: no Ray cluster answers there ({reason}, for {timeout:.0f} s); "
                "start one with `ray start --head` or correct the address"
            )
        time.sleep(1.0)


def die_with_node() -> None:
    """Called by a task in a Ray worker: the kernel SIGKILLs this worker the moment its raylet dies (Linux).

    Ray's own processes share the fate of the driver that started them (`fate_share`), but a worker lives in a
    process group of its own and, once its raylet is gone, runs on until it notices (about a second, more under
    load): a `mixer build` whose process group was SIGKILLed would leave shard tasks that go on publishing into the
    output, possibly over a rerun's newer shard. This is the call Ray makes for its own children
    (`set_kill_on_parent_death_linux`), made from the worker; it costs one syscall per task. (A
    `worker_process_setup_hook` would do it once per worker, but its runtime env costs seconds per build.)
    """
    if not sys.platform.startswith("linux"):
        return
    from ray._private.utils import set_kill_on_parent_death_linux

    set_kill_on_parent_death_linux()
    if os.getppid() == 1:  # the raylet died before the call above: the signal will never come
        os._exit(1)


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
