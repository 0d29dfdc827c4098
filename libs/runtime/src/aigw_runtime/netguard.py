"""SSRF guard for tenants' own upstream URLs.

A tenant's base URL must not reach the operator's network: loopback, private, link-local (the cloud
metadata address lives there), multicast, reserved and unspecified addresses are refused unless the
operator allow-lists them. The edge checks when a URL is saved; the worker checks again when it
connects and connects to the address it checked (a DNS answer may change in between).
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


def _forbidden(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _forbidden(ip.ipv4_mapped)
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"))
    )


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
        if _forbidden(ip) and not any(ip in net for net in allowed):
            raise InvalidRequest(
                f"base_url resolves to a non-public address ({ip}); the operator must allow-list it",
                param="base_url",
            )
    return addresses
