"""Secrets at rest (a tenant's upstream API key): AES-256-GCM with a key from the environment.

The sealed form is the contract between the edge (which seals on write) and the inference worker
(which opens just before calling the upstream), so the plaintext never sits in the config store nor
travels on the bus. Format: `v1.<base64url(nonce ‖ ciphertext ‖ tag)>`.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1."


class SecretError(ValueError):
    pass


def new_key() -> str:
    """A fresh key for `AIGW_SECRETS_KEY` (base64url of 32 random bytes)."""
    return base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode()


def _aead(key: str) -> AESGCM:
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    if len(raw) != 32:
        raise SecretError("AIGW_SECRETS_KEY must be base64url of 32 bytes")
    return AESGCM(raw)


def seal(plaintext: str, key: str) -> str:
    nonce = os.urandom(12)
    sealed = nonce + _aead(key).encrypt(nonce, plaintext.encode(), PREFIX.encode())
    return PREFIX + base64.urlsafe_b64encode(sealed).decode()


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def unseal(token: str, key: str) -> str:
    if not is_sealed(token):
        raise SecretError("not a sealed secret")
    raw = base64.urlsafe_b64decode(token[len(PREFIX) :])
    try:
        return _aead(key).decrypt(raw[:12], raw[12:], PREFIX.encode()).decode()
    except InvalidTag as exc:
        raise SecretError("the secret was sealed with another key or altered") from exc
