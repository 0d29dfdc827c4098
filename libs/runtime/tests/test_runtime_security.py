import ipaddress
from urllib.parse import urlsplit

import pytest

from aigw_contracts import errors
from aigw_runtime.netguard import check_url, embedded_ipv4, parse_allowlist
from aigw_runtime.secretbox import SecretError, new_key, seal, unseal


def test_sealed_secret_round_trips_and_hides_the_plaintext() -> None:
    key = new_key()
    token = seal("sk-very-secret", key)
    assert "sk-very-secret" not in token and token != seal("sk-very-secret", key)  # random nonce
    assert unseal(token, key) == "sk-very-secret"
    with pytest.raises(SecretError):
        unseal(token, new_key())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://localhost/v1",
        "http://10.1.2.3/v1",
        "http://192.168.0.10/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://0.0.0.0/v1",
        "http://100.64.0.1/v1",
        "ftp://example.com/v1",
        "http://user:pw@8.8.8.8/v1",
    ],
)
def test_non_public_or_odd_urls_are_refused(url: str) -> None:
    with pytest.raises(errors.InvalidRequest) as err:
        check_url(url)
    assert err.value.param == "base_url"


def test_public_addresses_pass_and_allowlisted_private_ones_too() -> None:
    assert [str(ip) for ip in check_url("https://8.8.8.8/v1")] == ["8.8.8.8"]
    assert check_url("http://127.0.0.1:9/v1", parse_allowlist(["127.0.0.0/8"]))


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("http://[2002:7f00:1::]/v1", "127.0.0.1"),  # 6to4
        ("http://[2002:a9fe:a9fe::1]/latest/meta-data", "169.254.169.254"),  # 6to4: cloud metadata
        ("http://[2002:a00:1::]/v1", "10.0.0.1"),  # 6to4: private
        ("http://[::ffff:a9fe:a9fe]/v1", "169.254.169.254"),  # IPv4-mapped
        ("http://[::7f00:1]/v1", "127.0.0.1"),  # IPv4-compatible
        ("http://[::ffff:0:7f00:1]/v1", "127.0.0.1"),  # SIIT (IPv4-translated)
        ("http://[64:ff9b::a9fe:a9fe]/v1", "169.254.169.254"),  # NAT64
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/v1", "127.0.0.1"),  # Teredo client
    ],
)
def test_ipv6_addresses_carrying_a_non_public_ipv4_are_refused(url: str, inside: str) -> None:
    host = urlsplit(url).hostname
    assert host is not None
    assert ipaddress.IPv4Address(inside) in embedded_ipv4(ipaddress.IPv6Address(host))
    with pytest.raises(errors.InvalidRequest) as err:
        check_url(url)
    assert err.value.param == "base_url"


def test_ipv6_addresses_carrying_a_public_ipv4_and_plain_ipv6_pass() -> None:
    assert [str(ip) for ip in check_url("http://[2002:808:808::1]/v1")] == ["2002:808:808::1"]
    assert check_url("http://[2606:4700:4700::1111]/v1")
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700:4700::1111")) == []
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) == []  # loopback itself, refused as such


def test_the_allowlist_applies_to_a_mapped_address_as_its_ipv4_and_to_6to4_only_by_name() -> None:
    loopback = parse_allowlist(["127.0.0.0/8"])
    assert check_url("http://[::ffff:127.0.0.1]:9/v1", loopback)
    with pytest.raises(errors.InvalidRequest):
        check_url("http://[2002:7f00:1::]/v1", loopback)  # not the same destination as 127.0.0.1
    assert check_url("http://[2002:7f00:1::]/v1", parse_allowlist(["2002:7f00::/24"]))
