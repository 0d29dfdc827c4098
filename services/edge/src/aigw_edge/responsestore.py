"""Stored `/v1/responses` answers, for `previous_response_id` and `GET /v1/responses/{id}`.

A JetStream key-value bucket (`aigw_contracts.streams.RESPONSES_BUCKET`), like the idempotency
answers and for the same reasons: every edge replica sees every entry, NATS is already there, and
the bucket's TTL is the retention (`AIGW_RESPONSES_RETENTION`). An entry is keyed by a hash of
tenant and response id, so a key of one tenant never finds another's response, and holds the
response object and the conversation that led to it (chat messages, the answer included), so a
continuation is that conversation plus the new input. Entries are zlib-compressed JSON. One that
cannot be kept (larger than the bus's payload limit, the bus down) is logged, and the answer still
goes out; continuing it is then a 404, as for an expired one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from typing import Any

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from aigw_contracts.errors import Unavailable
from aigw_contracts.streams import RESPONSES_BUCKET, RESPONSES_STORAGE

from .bus import Bus
from .idempotency import LazyBucket

log = logging.getLogger("aigw.edge.responses")


def entry_key(tenant: str, response_id: str) -> str:
    return hashlib.sha256(f"{tenant}\0{response_id}".encode()).hexdigest()


class ResponseStore:
    def __init__(self, bus: Bus, retention: float) -> None:
        self._bucket = LazyBucket(bus, retention, RESPONSES_BUCKET, RESPONSES_STORAGE).get

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        """The stored entry (`response`, `conversation`), or None if there is none for this tenant."""
        try:
            kv = await self._bucket()
            entry = await kv.get(entry_key(tenant, response_id))
        except KeyNotFoundError:
            return None
        except (NatsError, TimeoutError) as err:
            raise Unavailable("The gateway could not read its stored responses; try again shortly") from err
        found: dict[str, Any] = json.loads(zlib.decompress(entry.value or b""))
        return found

    async def put(self, tenant: str, response_id: str, entry: dict[str, Any]) -> bool:
        """Keep an entry; False (logged) when it could not be kept: the answer still goes out."""
        value = zlib.compress(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode())
        try:
            kv = await self._bucket()
            await kv.put(entry_key(tenant, response_id), value)
            return True
        except Exception:
            log.warning("could not store a response", extra={"response_id": response_id}, exc_info=True)
            return False

    async def delete(self, tenant: str, response_id: str) -> bool:
        if await self.get(tenant, response_id) is None:
            return False
        kv = await self._bucket()
        await kv.delete(entry_key(tenant, response_id))
        return True
