import pytest

from aigw_contracts import errors
from aigw_runtime.netguard import check_url, parse_allowlist
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
