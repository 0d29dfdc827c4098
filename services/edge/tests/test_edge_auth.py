"""API key lookup: HMAC hashes with a pepper, revocation, expiry, and swapping the key set."""

from __future__ import annotations

import pytest

from aigw_contracts import ApiKey
from aigw_contracts.errors import Unauthorized
from aigw_contracts.keys import hash_secret, new_secret
from aigw_edge.auth import KeyStore

PEPPER = "pepper-for-unit-tests"


def _store(*keys: ApiKey) -> KeyStore:
    return KeyStore(keys, PEPPER)


def _bearer(secret: str) -> bytes:
    return f"Bearer {secret}".encode()


def test_a_valid_key_is_found_by_its_peppered_hash() -> None:
    secret = new_secret()
    key = ApiKey(id="k1", tenant="t1", hash=hash_secret(secret, PEPPER))
    store = _store(key)
    assert store.hash(secret.encode()) == hash_secret(secret, PEPPER)
    assert store.authenticate(_bearer(secret)) == key
    assert store.authenticate(f"bearer   {secret}  ".encode()).id == "k1"  # scheme is case-insensitive


def test_the_same_secret_under_another_pepper_is_refused() -> None:
    secret = new_secret()
    store = _store(ApiKey(id="k1", tenant="t1", hash=hash_secret(secret, "another-pepper")))
    with pytest.raises(Unauthorized):
        store.authenticate(_bearer(secret))


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        (b"", "missing_api_key"),
        (b"Basic dXNlcjpwYXNz", "invalid_api_key"),
        (b"Bearer ", "invalid_api_key"),
        (b"Bearer aigw_" + b"x" * 600, "invalid_api_key"),
        (b"Bearer aigw_unknown-but-plausible-looking-key-0123456789", "invalid_api_key"),
    ],
)
def test_missing_malformed_and_unknown_keys_are_401(header: bytes | None, code: str) -> None:
    store = _store(ApiKey(id="k1", tenant="t1", hash=hash_secret(new_secret(), PEPPER)))
    with pytest.raises(Unauthorized) as err:
        store.authenticate(header)
    assert err.value.status == 401 and err.value.code == code


def test_a_revoked_key_is_refused() -> None:
    secret = new_secret()
    store = _store(ApiKey(id="k1", tenant="t1", hash=hash_secret(secret, PEPPER), revoked=True))
    with pytest.raises(Unauthorized) as err:
        store.authenticate(_bearer(secret))
    assert err.value.code == "revoked_api_key"


def test_a_key_works_until_it_expires() -> None:
    secret = new_secret()
    store = _store(ApiKey(id="k1", tenant="t1", hash=hash_secret(secret, PEPPER), expires_at=1000.0))
    assert store.authenticate(_bearer(secret), now=999.9).id == "k1"
    with pytest.raises(Unauthorized) as err:
        store.authenticate(_bearer(secret), now=1000.0)
    assert err.value.code == "expired_api_key"


def test_replace_swaps_the_whole_key_set() -> None:
    old, new = new_secret(), new_secret()
    store = _store(ApiKey(id="old", tenant="t1", hash=hash_secret(old, PEPPER)))
    store.replace([ApiKey(id="new", tenant="t2", hash=hash_secret(new, PEPPER))])
    assert store.authenticate(_bearer(new)).tenant == "t2"
    with pytest.raises(Unauthorized):
        store.authenticate(_bearer(old))


class CountingStore(KeyStore):
    """A key store that counts its HMAC computations."""

    hashed = 0

    def hash(self, secret: bytes) -> str:
        self.hashed += 1
        return super().hash(secret)


def test_a_verified_key_is_not_hashed_again_until_the_key_set_changes() -> None:
    secret = new_secret()
    key = ApiKey(id="k1", tenant="t1", hash=hash_secret(secret, PEPPER))
    store = CountingStore([key], PEPPER)
    for _ in range(3):
        assert store.authenticate(_bearer(secret)) == key
    assert store.hashed == 1
    for _ in range(2):  # a wrong secret is never cached: hashed every time
        with pytest.raises(Unauthorized):
            store.authenticate(_bearer(secret + "x"))
    assert store.hashed == 3
    store.replace([key])  # any change of the key set forgets what was verified
    assert store.authenticate(_bearer(secret)) == key
    assert store.hashed == 4


def test_revoking_or_deleting_a_cached_key_refuses_it_at_once() -> None:
    secret, other = new_secret(), new_secret()
    key = ApiKey(id="k1", tenant="t1", hash=hash_secret(secret, PEPPER))
    store = _store(key, ApiKey(id="k2", tenant="t1", hash=hash_secret(other, PEPPER)))
    assert store.authenticate(_bearer(secret)).id == "k1"  # cached now
    store.replace([key.model_copy(update={"revoked": True})])
    with pytest.raises(Unauthorized) as err:
        store.authenticate(_bearer(secret))
    assert err.value.code == "revoked_api_key"
    store.replace([])
    with pytest.raises(Unauthorized) as err:
        store.authenticate(_bearer(secret))
    assert err.value.code == "invalid_api_key"


def test_a_cached_key_still_expires_on_time() -> None:
    secret = new_secret()
    store = _store(ApiKey(id="k1", tenant="t1", hash=hash_secret(secret, PEPPER), expires_at=1000.0))
    assert store.authenticate(_bearer(secret), now=999.0).id == "k1"  # cached now
    with pytest.raises(Unauthorized) as err:
        store.authenticate(_bearer(secret), now=1000.0)
    assert err.value.code == "expired_api_key"
