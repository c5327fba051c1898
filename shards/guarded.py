"""urllib3 pools whose connections apply the address policy at connect time, to the addresses they then connect to.

The check sits in the connection's `_new_conn`, so it covers every hop of a redirect and cannot be raced by DNS
rebinding: the name is resolved once, every resolved address is checked (`AddressPolicy.refusal`), and the socket
connects to those same addresses, never resolving again. TLS still verifies the certificate against the host name
(urllib3 wraps the socket with `server_hostname=host` after `_new_conn`).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from shards.policy import AddressPolicy


class AddressRefused(Exception):
    """A connection the address policy forbids; raised before any packet is sent, never retried.

    Not an OSError on purpose: urllib3 would wrap an OSError from `_new_conn` as a retryable connection failure.
    """


class _Checked:
    """Mixin for urllib3's connection classes: resolve, check every address, connect only to checked addresses."""

    policy: AddressPolicy
    _dns_host: str
    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        host = self._dns_host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e  # type: ignore[arg-type]
        refusal = self.policy.refusal(self.host, [info[4][0] for info in infos])
        if refusal:
            raise AddressRefused(refusal)
        try:
            sock = _connect_first(infos, self.timeout, self.source_address, self.socket_options)
        except TimeoutError as e:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from e
        except OSError as e:
            raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e  # type: ignore[arg-type]
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock


def _connect_first(infos: list[Any], timeout: Any, source: tuple[str, int] | None, options: Any) -> socket.socket:
    """Connect to the first of the resolved addresses that answers (what urllib3's `create_connection` does)."""
    err: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for opt in options or ():
                sock.setsockopt(*opt)
            if timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source:
                sock.bind(source)
            sock.connect(address)
            return sock
        except OSError as e:
            err = e
            sock.close()
    raise err or OSError("getaddrinfo returned no address")


def guarded_pool_manager(policy: AddressPolicy, **kwargs: Any) -> urllib3.PoolManager:
    """A PoolManager whose http and https connections obey `policy` (kwargs as for `urllib3.PoolManager`)."""
    http_conn = type("CheckedHTTPConnection", (_Checked, HTTPConnection), {"policy": policy})
    https_conn = type("CheckedHTTPSConnection", (_Checked, HTTPSConnection), {"policy": policy})
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {
        "http": type("CheckedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("CheckedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }
    return manager
