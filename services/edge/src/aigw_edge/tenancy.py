"""Tenant ids: what one may look like, which are reserved, and checking a reference to one.

A tenant id ends up in NATS subjects (usage is published per tenant), in config-store keys and in
queries, so only plain lower-case ids exist: no spaces, dots or wildcards. Some words are reserved
because the API gives them a meaning of their own (`GET /v1/usage?tenant=all`): a tenant named so
could otherwise be mistaken for the switch, or the switch for it.
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import Final

from aigw_contracts import errors

TENANT_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ALL_TENANTS: Final = "all"  # `?tenant=all`: every tenant (operator keys only)
RESERVED_TENANT_IDS: Final = frozenset({ALL_TENANTS, "any", "none", "null", "self"})

_TENANT_ID = re.compile(TENANT_ID_PATTERN)


def check_new_tenant_id(tenant_id: str) -> None:
    """A new tenant's id: not a reserved word (the pattern is the schema's job)."""
    if tenant_id in RESERVED_TENANT_IDS:
        raise errors.InvalidRequest(
            f"'{tenant_id}' is reserved and cannot name a tenant; reserved: "
            f"{', '.join(sorted(RESERVED_TENANT_IDS))}.",
            param="id",
        )


def tenant_ref(ref: str, param: str = "tenant") -> str:
    """`ref` if it can name a tenant; 400 otherwise (a malformed reference tells nothing about
    which tenants exist, so anyone may be told)."""
    if not _TENANT_ID.match(ref) or ref in RESERVED_TENANT_IDS:
        raise errors.InvalidRequest(
            f"'{ref}' is not a tenant id (lower-case letters, digits, '-' and '_'; not a reserved word).",
            param=param,
        )
    return ref


def existing_tenant(ref: str, known: Container[str], param: str = "tenant") -> str:
    """`ref` if it names an existing tenant: 400 if it cannot be a tenant id, 404 if no tenant has
    it. For operator keys: to other keys, another tenant is a refusal whether it exists or not."""
    tenant_ref(ref, param)
    if ref not in known:
        err = errors.NotFound(f"No tenant '{ref}' exists.", param=param)
        err.code = "tenant_not_found"
        raise err
    return ref
