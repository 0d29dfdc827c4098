"""`GET /v1/circuits`: the upstream deployments' circuit breakers, as the inference workers see them.

Each worker decides alone and publishes the circuits it does not hold closed to the `aigw_circuits`
key-value bucket (`aigw_worker.board`); this reads the bucket once per call. Operators see every
upstream; a tenant's admin sees their own endpoints only.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter
from nats.js.errors import BucketNotFoundError

from aigw_contracts import ApiKey, Upstream, errors
from aigw_contracts.config import deployment_names
from aigw_contracts.streams import CIRCUITS_BUCKET

from ..deps import AdminKey, TheBus
from ..openapi import errors as openapi_errors
from .access import can_see, not_found
from .schemas import CircuitOut, ListOf
from .store import Config

router = APIRouter(prefix="/v1/circuits", tags=["upstreams"], responses=openapi_errors(401, 403, 404))

_READ_TIMEOUT = 3.0  # seconds: the bucket is small; a bus that cannot answer by then is down
_WORST = {"closed": 0, "half_open": 1, "open": 2}


async def _entries(bus: Any) -> list[dict[str, Any]]:
    """Every entry of the bucket (the circuits some worker holds open or half-open)."""
    nc = bus.nc
    if nc is None or not nc.is_connected:
        raise errors.Unavailable("The gateway is not connected to its message bus; try again shortly")
    js = nc.jetstream()
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(_READ_TIMEOUT):
            kv = await js.key_value(CIRCUITS_BUCKET)
            watcher = await kv.watchall(ignore_deletes=True)
            try:
                async for entry in watcher:
                    if entry is None:
                        break  # all current values delivered
                    if entry.value:
                        found.append(json.loads(entry.value))
            finally:
                await watcher.stop()
    except BucketNotFoundError:
        return []  # no worker has opened a circuit yet
    except TimeoutError:
        raise errors.Unavailable("The circuit states could not be read in time; try again") from None
    return found


def _visible(key: ApiKey, upstream: Upstream | None) -> bool:
    """Operators: every upstream (deleted ones too); admins: their tenant's own endpoints."""
    if upstream is None or upstream.kind == "catalog":
        return key.operator
    return can_see(key, upstream.tenant)


@router.get("", summary="Circuit breakers of upstream deployments that are not closed (or of one upstream)")
async def list_(
    key: AdminKey, config: Config, bus: TheBus, upstream: str | None = None
) -> ListOf[CircuitOut]:
    now = time.time()
    rows: dict[tuple[str, str], CircuitOut] = {}
    if upstream is not None:
        target = config.upstream(upstream)
        if target is None or not _visible(key, target):
            raise not_found("upstream", upstream, "upstream")
        for name in deployment_names(target.deployments) if target.deployments else ["0"]:
            rows[(target.id, name)] = CircuitOut(upstream=target.id, deployment=name, state="closed")
    for entry in await _entries(bus):
        upstream_id, deployment = str(entry.get("upstream")), str(entry.get("deployment"))
        if upstream is not None and upstream_id != upstream:
            continue
        if not _visible(key, config.upstream(upstream_id)):
            continue
        state = str(entry.get("state"))
        until = float(entry.get("open_until") or 0)
        if state == "open" and until <= now:
            state = "half_open"  # its cool-down is over: the next request probes it
        if state not in _WORST:
            continue
        row = rows.setdefault(
            (upstream_id, deployment), CircuitOut(upstream=upstream_id, deployment=deployment, state="closed")
        )
        row.workers[str(entry.get("worker"))] = state
        if _WORST[state] > _WORST[row.state]:
            row.state = state  # type: ignore[assignment]
        if state == "open":
            row.open_until = max(row.open_until or 0, until)
    ordered = sorted(rows.values(), key=lambda r: (r.upstream, r.deployment))
    return ListOf[CircuitOut](data=ordered)
