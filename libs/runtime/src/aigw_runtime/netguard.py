"""SSRF guard for tenants' own upstream URLs.

A tenant's base URL must not reach the operator's network: loopback, private, link-local (the cloud
metadata address lives there), multicast, reserved and unspecified addresses are refused unless the
operator allow-lists them. The edge checks when a URL is saved; the worker checks again when it
connects and connects to the address it checked (a DNS answer may change in between).

IPv6 addresses that carry an IPv4 address reach that IPv4 address: IPv4-mapped (`::ffff:0:0/96`,
the same socket on a dual-stack host), IPv4-compatible (`::/96`), SIIT (`::ffff:0:0:0/96`), NAT64
(`64:ff9b::/96`), 6to4 (`2002::/16`, whose relay forwards to the embedded address) and Teredo
(`2001::/32`: its server and its client). Such an address is refused when the embedded IPv4 address
would be (`2002:7f00:1::` is 127.0.0.1), and also when the IPv6 address itself is non-public. An
IPv4-mapped address is judged as its IPv4 address, allow-list included; for the others the
allow-list must name the IPv6 address itself.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aigw_contracts.errors import InvalidRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allowlist(entries: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip()]


_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public, not "private" either
_COMPATIBLE = ipaddress.ip_network("::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a network's own translator


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (and traffic to it may reach), if any."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)  # (server, client); the client is de-obfuscated already
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64 or ip in _TRANSLATED:
        return [low]
    if ip in _COMPATIBLE and int(ip) > 1:  # not :: nor ::1
        return [low]
    return []


def _forbidden(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _forbidden(ip.ipv4_mapped)
        if any(_forbidden(v4) for v4 in embedded_ipv4(ip)) or ip in _NAT64_LOCAL:
            return True
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED)
    )


def _allowed(ip: Address, allowed: list[Network]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allowed)


def resolve(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise InvalidRequest(f"cannot resolve the upstream host '{host}'", param="base_url") from exc
    return sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=str)


def check_url(url: str, allow: Iterable[Network] = ()) -> list[Address]:
    """The addresses `url` may be reached at; raises InvalidRequest (param base_url) if it must not be."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("base_url must be an http(s) URL with a host", param="base_url")
    if parts.username or parts.password:
        raise InvalidRequest("base_url must not carry credentials; use api_key", param="base_url")
    allowed = list(allow)
    addresses = resolve(parts.hostname)
    for ip in addresses:
        if _forbidden(ip) and not _allowed(ip, allowed):
            raise InvalidRequest(
                f"base_url resolves to a non-public address ({ip}); the operator must allow-list it",
                param="base_url",
            )
    return addresses
