"""The fetch policy: URL columns hold http(s) only, and downloads reach only public addresses unless opted in.

The address policy is tested as a pure function over literal addresses and made-up resolver answers; the
integration tests send traffic to 127.0.0.1 only (refused without the opt-in, served with it).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import quote

import pydantic
import pytest

from shards.download import Downloader
from shards.http_faults import FaultServer
from shards.options import DownloadOptions
from shards.policy import AddressPolicy, address_kind, literal_ip, url_error

NOTE = "(shards.download.allow_private opts in)"
LOCAL = "scheme not allowed: none (a local path; only http and https URLs are fetched)"

URLS = [
    ("http://example.org/a.jpg", None),
    ("HTTPS://example.org/a.jpg", None),
    ("  https://example.org/a.jpg", None),
    ("/home/me/secret.png", LOCAL),
    ("secret.png", LOCAL),
    ("../secret.png", LOCAL),
    ("C:\\Users\\me\\secret.png", LOCAL),
    ("file:///home/me/secret.png", "scheme not allowed: file"),
    ("FILE:///etc/passwd", "scheme not allowed: file"),
    ("s3://bucket/key.jpg", "scheme not allowed: s3"),
    ("gs://bucket/key.jpg", "scheme not allowed: gs"),
    ("hf://datasets/x/y.jpg", "scheme not allowed: hf"),
    ("data:image/png;base64,iVBORw0KGgo=", "scheme not allowed: data"),
    ("ftp://example.org/a.jpg", "scheme not allowed: ftp"),
    ("gopher://127.0.0.1:6379/_INFO", "scheme not allowed: gopher"),
]


@pytest.mark.parametrize(("url", "expected"), URLS)
def test_url_error(url, expected):
    assert url_error(url) == expected


LITERALS = [
    ("10.0.0.1", "10.0.0.1"),
    ("[::1]", "::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("::ffff:10.0.0.1", "::ffff:a00:1"),
    ("2130706433", "127.0.0.1"),  # decimal
    ("0x7f000001", "127.0.0.1"),  # hexadecimal
    ("0177.0.0.1", "127.0.0.1"),  # octal
    ("0x7f.1", "127.0.0.1"),  # two-part form
    ("127.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("1.2.3.256", None),
    ("example.org", None),
    ("1e100.net", None),
    ("0x7g.0.0.1", None),
]


@pytest.mark.parametrize(("host", "expected"), LITERALS)
def test_literal_ip(host, expected):
    assert literal_ip(host) == (None if expected is None else ipaddress.ip_address(expected))


KINDS = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("172.32.0.1", None),
    ("192.168.1.1", "private"),
    ("100.100.100.200", "private"),
    ("169.254.169.254", "link-local"),
    ("224.0.0.251", "multicast"),
    ("255.255.255.255", "reserved"),
    ("8.8.8.8", None),
    ("93.184.215.14", None),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("fc00::1", "private"),
    ("fd00:ec2::254", "private"),
    ("ff02::1", "multicast"),
    ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:8.8.8.8", None),
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("::127.0.0.1", "loopback"),  # IPv4-compatible
    ("2606:4700:4700::1111", None),
    ("2001:4860:4860::8888", None),
]


@pytest.mark.parametrize(("address", "kind"), KINDS)
def test_address_kind(address, kind):
    assert address_kind(ipaddress.ip_address(address)) == kind


DEFAULT = AddressPolicy()
PRIVATE_OK = AddressPolicy.from_options(True, [])


def listed(*hosts: str) -> AddressPolicy:
    return AddressPolicy.from_options(False, list(hosts))


def no(named: str, kind: str) -> str:
    return f"address not allowed: {named} is {kind} {NOTE}"


# (policy, host, what the resolver answered, expected refusal or None)
REFUSALS = [
    (DEFAULT, "127.0.0.1", ["127.0.0.1"], no("127.0.0.1", "loopback")),
    (DEFAULT, "0.0.0.0", ["0.0.0.0"], no("0.0.0.0", "unspecified")),
    (DEFAULT, "[::]", ["::"], no("[::] (::)", "unspecified")),
    (DEFAULT, "::ffff:10.0.0.1", ["::ffff:10.0.0.1"], no("::ffff:10.0.0.1 (::ffff:a00:1)", "private")),
    (DEFAULT, "2130706433", ["127.0.0.1"], no("2130706433 (127.0.0.1)", "loopback")),
    (DEFAULT, "0177.0.0.1", ["127.0.0.1"], no("0177.0.0.1 (127.0.0.1)", "loopback")),
    (DEFAULT, "169.254.169.254", ["169.254.169.254"], no("169.254.169.254", "link-local")),
    (
        DEFAULT,
        "metadata.google.internal",
        ["169.254.169.254"],
        no("metadata.google.internal (169.254.169.254)", "link-local"),
    ),
    (DEFAULT, "images.example", ["93.184.215.14"], None),
    (DEFAULT, "images.example", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"], None),
    # every answer is checked: a private address behind a public one is refused
    (DEFAULT, "images.example", ["93.184.215.14", "10.0.0.7"], no("images.example (10.0.0.7)", "private")),
    (DEFAULT, "rebind.example", ["192.168.0.1"], no("rebind.example (192.168.0.1)", "private")),
    (DEFAULT, "v6.example", ["fe80::1"], no("v6.example (fe80::1)", "link-local")),
    (DEFAULT, "odd.example", ["not-an-ip"], "address not allowed: 'not-an-ip' is not an IP address"),
    (PRIVATE_OK, "127.0.0.1", ["127.0.0.1"], None),
    (PRIVATE_OK, "metadata.google.internal", ["169.254.169.254"], None),
    (listed("127.0.0.1"), "127.0.0.1", ["127.0.0.1"], None),
    (listed("127.0.0.1"), "localhost", ["127.0.0.1", "::1"], no("localhost (::1)", "loopback")),
    (listed("LocalHost."), "localhost", ["127.0.0.1", "::1"], None),
    (listed("10.0.0.0/8"), "nas.lan", ["10.1.2.3"], None),
    (listed("10.0.0.0/8"), "nas.lan", ["::ffff:10.1.2.3"], None),
    (listed("10.0.0.0/8"), "nas.lan", ["192.168.0.2"], no("nas.lan (192.168.0.2)", "private")),
    (listed("fd00::/8"), "v6.lan", ["fd12::1"], None),
]


@pytest.mark.parametrize(("policy", "host", "resolved", "expected"), REFUSALS)
def test_refusal(policy, host, resolved, expected):
    assert policy.refusal(host, resolved) == expected


def test_allow_hosts_entries_are_checked_at_validation():
    assert DownloadOptions(allow_hosts=["10.0.0.0/8", "::1", "nas.lan"]).allow_hosts == ["10.0.0.0/8", "::1", "nas.lan"]
    for bad in ("not a host", "http://nas.lan", ""):
        with pytest.raises(pydantic.ValidationError, match="allow_hosts"):
            DownloadOptions(allow_hosts=[bad])


# --- on 127.0.0.1 only ------------------------------------------------------------------------------------------

FAST = dict(connect_timeout=0.5, read_timeout=0.5, retries=2, backoff=0.01)
IMAGE = b"\xff\xd8\xff\xe0image"


@pytest.fixture
def server():
    with FaultServer({"a.jpg": IMAGE}) as s:
        yield s


def fetch(url: str, **options):
    with Downloader(DownloadOptions(**FAST, **options)) as downloader:
        return downloader.fetch(url)


def test_loopback_is_refused_by_default_without_a_request(server):
    port = server.url.rsplit(":", 1)[1]
    for url, named in (
        (f"{server.url}/ok/a.jpg", "127.0.0.1"),
        (f"http://localhost:{port}/ok/a.jpg", "localhost (127.0.0.1)"),
        (f"http://2130706433:{port}/ok/a.jpg", "2130706433 (127.0.0.1)"),
    ):
        got = fetch(url)
        assert (got.ok, got.error, got.attempts) == (False, f"address not allowed: {named} is loopback {NOTE}", 1)
    assert server.hits == {}  # nothing reached the server, and the refusals were not retried


def test_loopback_is_served_with_the_opt_in(server):
    assert fetch(server.url + "/ok/a.jpg", allow_private=True).data == IMAGE
    assert fetch(server.url + "/ok/a.jpg", allow_hosts=["127.0.0.1"]).data == IMAGE
    assert fetch(server.url + "/ok/a.jpg", allow_hosts=["127.0.0.0/8"]).data == IMAGE
    assert server.hits["/ok/a.jpg"] == 3


def test_redirect_targets_are_checked_too(server):
    port = server.url.rsplit(":", 1)[1]
    # allowed by name: localhost; the redirect goes to 127.0.0.1, which is not listed
    hop = f"http://localhost:{port}/redirect-to?url=" + quote(f"{server.url}/ok/a.jpg", safe="")
    got = fetch(hop, allow_hosts=["localhost"])
    assert (got.error, got.final_url) == (
        f"address not allowed: 127.0.0.1 is loopback {NOTE}",
        f"{server.url}/ok/a.jpg",
    )
    assert (server.hits["/redirect-to"], server.hits["/ok/a.jpg"]) == (1, 0)
    # a redirect to a local file is refused by scheme
    got = fetch(f"{server.url}/redirect-to?url=file:///etc/passwd", allow_private=True)
    assert got.error == "scheme not allowed: file"


def test_connects_to_the_address_it_checked(server, monkeypatch):
    """DNS rebinding: the name is resolved once per connection, and the socket goes to that checked answer.

    The fake resolver answers 127.0.0.1 (allowed) first and 127.0.0.2 (not allowed; nothing listens there on this
    port) to any later lookup: a client that checked one answer and connected by name again would fail.
    """
    port = int(server.url.rsplit(":", 1)[1])
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host, *args, **kwargs):
        if host != "images.test":
            return real(host, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    got = fetch(f"http://images.test:{port}/ok/a.jpg", allow_hosts=["127.0.0.1"])
    assert (got.ok, got.data, lookups) == (True, IMAGE, ["images.test"])
    assert server.hosts == [f"images.test:{port}"]  # the request still names the host (virtual hosting, TLS SNI)
