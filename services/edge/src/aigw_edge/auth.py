"""API key authentication: `Authorization: Bearer <key>` checked against stored HMAC-SHA256 hashes.

Keys are stored only as `keys.hash_secret(secret, pepper)`, so a lookup hashes the presented secret
and finds it in a dict keyed by hash: no secret is ever held in memory beyond the request, and the
lookup time does not depend on how many leading characters of a guess are right. The match is
confirmed with `hmac.compare_digest` anyway, so that property does not rest on dict internals.

`KeyStore` is the only thing the rest of the edge knows about keys; the config store's watcher
calls `replace()` whenever a key changes (created, revoked, expired, deleted).

Verified keys are cached by their presented secret, so a client's next request costs a dict lookup
instead of an HMAC (about a tenth of the edge's CPU per request when sampled). What that keeps safe:
* only keys that matched are cached, so an unknown or guessed secret is hashed every time, and the
  cache is bounded (`_MAX_CACHED`, emptied when full);
* revocation, deletion and any other key change reach every replica through the config store's
  watch, which calls `replace()`: that empties the cache at once, so the next request is checked
  against the new key set; expiry is checked on every request, cached or not;
* a lookup finds an entry only by the whole secret (the dict hashes it with the process's random
  seed before any byte comparison), so its time says nothing about a guess's leading characters.
The price is that secrets of recently used keys stay in this process's memory (as the pepper does).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable

from starlette.types import Scope

from aigw_contracts import ApiKey
from aigw_contracts.errors import InvalidRequest, Unauthorized

log = logging.getLogger("aigw.edge.auth")

_BEARER = b"bearer "
_MAX_SECRET = 512  # longer than any key we issue; refuse before hashing arbitrary junk
_MAX_CACHED = 10_000  # verified secrets kept; the cache is emptied when it is full


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's raw value from an ASGI scope (names there are lower-case)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def duplicate_authorization() -> InvalidRequest:
    """Two `Authorization` headers: which one counts would depend on the code reading them (and
    on any proxy in between), so neither does."""
    return InvalidRequest(
        "The request has more than one Authorization header; send exactly one.",
        code="duplicate_authorization",
    )


def authorization(scope: Scope) -> bytes | None:
    """The request's one `Authorization` header value; `InvalidRequest` if there are several."""
    found: bytes | None = None
    for key, value in scope["headers"]:
        if key == b"authorization":
            if found is not None:
                raise duplicate_authorization()
            found = bytes(value)
    return found


class KeyStore:
    def __init__(self, keys: Iterable[ApiKey], pepper: str) -> None:
        # The pepper's HMAC state is computed once; each lookup copies it (cheaper than hmac.new).
        self._mac = hmac.new(pepper.encode(), digestmod=hashlib.sha256)
        self._by_hash: dict[str, ApiKey] = {}
        self._verified: dict[bytes, ApiKey] = {}  # secret -> its key, for keys that matched
        self.replace(keys)

    def replace(self, keys: Iterable[ApiKey]) -> None:
        """Swap in a new set of keys at once (a watched store calls this on every change); every
        cached verification is forgotten with the old set."""
        self._by_hash = {key.hash: key for key in keys}
        self._verified = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def hash(self, secret: bytes) -> str:
        mac = self._mac.copy()
        mac.update(secret)
        return mac.hexdigest()

    def authenticate(self, authorization: bytes | None, now: float | None = None) -> ApiKey:
        """The key an `Authorization` header value names; `Unauthorized` if there is none usable."""
        if not authorization:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if authorization[:7].lower() != _BEARER:
            raise Unauthorized("The Authorization header must be 'Bearer <key>'.")
        secret = authorization[7:].strip()
        if not secret or len(secret) > _MAX_SECRET:
            raise Unauthorized("Incorrect API key provided.")
        key = self._verified.get(secret)
        if key is None:
            digest = self.hash(secret)
            key = self._by_hash.get(digest)
            if key is None or not hmac.compare_digest(key.hash, digest):
                raise Unauthorized("Incorrect API key provided.")
            if len(self._verified) >= _MAX_CACHED:
                self._verified = {}
            self._verified[secret] = key
        if key.revoked:
            raise Unauthorized("This API key has been revoked.", code="revoked_api_key")
        if key.expires_at is not None and (time.time() if now is None else now) >= key.expires_at:
            raise Unauthorized("This API key has expired.", code="expired_api_key")
        return key
