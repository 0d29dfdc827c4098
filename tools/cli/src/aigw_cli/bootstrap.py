"""`aigw bootstrap`: the first operator key of a fresh deployment, written straight into the config store.

Every other change goes through the management API, which needs a key; this is how the first one
comes to exist. It needs the same pepper as the edges (AIGW_KEY_PEPPER) and access to NATS as a user
that may write the config bucket (`admin` or `edge`, `aigw_runtime.natsauth`): `--nats-url
nats://admin:<password>@host:4222`, or AIGW_NATS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import nats

from aigw_contracts import ApiKey, Tenant
from aigw_contracts.ids import uuid7
from aigw_contracts.keys import hash_secret, new_secret
from aigw_runtime.configstore import ConfigWriter
from aigw_runtime.natsauth import inbox_prefix_of

from .client import CliError


def register(commands: Any) -> None:
    p = commands.add_parser(
        "bootstrap",
        help="create a deployment's first operator key",
        description="Create the first operator key directly in the config store.",
    )
    p.add_argument("--nats-url", default=os.environ.get("AIGW_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--tenant", default="operator")
    p.set_defaults(run=None, offline=run, render=lambda r: f"operator key (shown once): {r['secret']}")


async def _write(url: str, tenant: str, key: ApiKey) -> None:
    nc = await nats.connect(url, inbox_prefix=inbox_prefix_of(url))  # the prefix its NATS user may read
    try:
        writer = await ConfigWriter.open(nc.jetstream())
        await writer.put("tenant", Tenant(id=tenant, name="Operator"))
        await writer.put("key", key)
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    pepper = os.environ.get("AIGW_KEY_PEPPER")
    if not pepper:
        raise CliError("set AIGW_KEY_PEPPER to the pepper the edges use")
    secret = new_secret()
    key = ApiKey(
        id=uuid7(),
        tenant=args.tenant,
        hash=hash_secret(secret, pepper),
        admin=True,
        operator=True,
        name="bootstrap",
        created_at=time.time(),
        prefix=secret[:12],
    )
    asyncio.run(_write(args.nats_url, args.tenant, key))
    return {"id": key.id, "tenant": key.tenant, "secret": secret}
