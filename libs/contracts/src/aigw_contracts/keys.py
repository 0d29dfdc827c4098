"""API keys: random secrets behind a recognisable prefix, stored only as HMAC-SHA256 with a pepper.

A fast keyed hash is right for high-entropy random keys (OWASP); the pepper lives in the
environment, so a leaked store alone cannot be used to check guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "aigw_"


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def looks_like_key(secret: str) -> bool:
    return secret.startswith(KEY_PREFIX) and 40 <= len(secret) <= 128
