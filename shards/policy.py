"""What a build may fetch, as pure functions: which URLs a URL column may hold, which addresses a download may reach.

A URL column holds untrusted data (anyone can publish a LAION-style list), so it may name only `http://` and
`https://` URLs: a local path, `file://`, `s3://`, `data:` ... in it would read the builder's disk or use the
builder's credentials. And by default a download may not reach a loopback, private, link-local, unspecified,
multicast or reserved address (cloud metadata services, the builder's own LAN) unless the manifest opts in with
`shards.download.allow_private` or lists the host in `shards.download.allow_hosts`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

URL_SCHEMES = frozenset({"http", "https"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# First match wins. Explicit rather than `ipaddress`'s is_private/is_global, whose tables change between Python
# versions; the IPv6 forms that embed an IPv4 address are unwrapped first (see `embedded_ipv4`).
REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "unspecified"),  # 0.0.0.0 reaches the local host on Linux
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "private"),  # carrier-grade NAT; also some clouds' metadata service (100.100.100.200)
        ("169.254.0.0/16", "link-local"),  # cloud metadata services (169.254.169.254)
        ("192.0.0.0/24", "reserved"),
        ("198.18.0.0/15", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # 255.255.255.255 included
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fc00::/7", "private"),  # unique local addresses (fd00:ec2::254 is a cloud metadata address)
        ("fec0::/10", "private"),  # deprecated site-local
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Hosts that inet_aton reads as IPv4 (`2130706433`, `0x7f.1`, `0177.0.0.1`); libc resolvers accept them too.
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


def url_error(url: str) -> str | None:
    """Why `url` may not stand in a URL column (`scheme not allowed: file`), or None for an http(s) URL."""
    scheme = urlsplit(url.strip()).scheme.lower()
    if scheme in URL_SCHEMES:
        return None
    if not scheme or len(scheme) == 1:  # a bare path, or a Windows drive letter
        return "scheme not allowed: none (a local path; only http and https URLs are fetched)"
    return f"scheme not allowed: {scheme}"


def literal_ip(host: str) -> IPAddress | None:
    """The address a host names literally (`10.0.0.1`, `[::1]`, `fe80::1%eth0`, `2130706433`, `0x7f.1`), else None."""
    host = host.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:  # a component out of range, e.g. 1.2.3.256
            return None
    return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and would be routed to (mapped, NAT64, IPv4-compatible), else None."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_kind(ip: IPAddress) -> str | None:
    """`loopback`, `private`, `link-local`, `unspecified`, `multicast` or `reserved`; None for a public address."""
    ip = embedded_ipv4(ip) or ip
    for net, kind in REFUSED_NETWORKS:
        if ip.version == net.version and ip in net:
            return kind
    return None


def parse_allowed(entries: Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """`allow_hosts` entries → (host names, lower-cased; networks, an address being a /32 or /128).

    A `ValueError` names an entry that is neither a host name nor an address or network.
    """
    names, networks = set(), []
    for entry in entries:
        text = entry.strip().strip("[]")
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        if not text or not re.fullmatch(r"[A-Za-z0-9_.-]+", text) or "/" in text:
            raise ValueError(f"{entry!r} is neither a host name nor an IP address or network")
        names.add(text.lower().rstrip("."))
    return frozenset(names), tuple(networks)


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses downloads may reach: public ones always; others with `allow_private`, or when listed.

    `hosts` are host names allowed whatever they resolve to (their DNS is trusted); `networks` are addresses and
    networks allowed.
    """

    allow_private: bool = False
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_options(cls, allow_private: bool, allow_hosts: Iterable[str]) -> AddressPolicy:
        hosts, networks = parse_allowed(allow_hosts)
        return cls(allow_private, hosts, networks)

    def refusal(self, host: str, addresses: Iterable[str]) -> str | None:
        """Why connecting to `host`, which resolved to `addresses`, is refused (naming the address), else None.

        Every address is checked, not just the first: a name that resolves to one public and one private address is
        refused, so a resolver cannot slip a private address in behind a public one.
        """
        if self.allow_private or host.strip().strip("[]").lower().rstrip(".") in self.hosts:
            return None
        for text in addresses:
            ip = literal_ip(text)
            if ip is None:
                return f"address not allowed: {text!r} is not an IP address"
            kind = address_kind(ip)
            if kind is None:
                continue
            unwrapped = embedded_ipv4(ip) or ip
            if any(a.version == n.version and a in n for n in self.networks for a in {ip, unwrapped}):
                continue
            named = host if host == str(ip) else f"{host} ({ip})"
            return f"address not allowed: {named} is {kind} (shards.download.allow_private opts in)"
        return None
