"""Bill a gateway's response-cache hit (`subjects.RETRIEVAL_CACHE_HIT`) for the edge that served it.

Here rather than at the edge so that the internet-facing process never publishes usage (see
`aigw_runtime.natsauth`): the price comes from the gateway's config as this service sees it, and
the gateway must be the tenant's and have its cache on. The answer waits until the usage stream
stored the line (`UsagePublisher.durable`), as the worker's final event does.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydantic import ValidationError

from aigw_contracts import UsageEvent, errors, skus
from aigw_contracts.api import GeneratedUsage
from aigw_contracts.cache import CacheHit, CacheHitBilled

from .manage import Reply
from .service import Knowledge

log = logging.getLogger("aigw.retrieval.cachehits")

DURABLE_WITHIN = 5.0  # seconds to wait for the usage stream's ack


class CacheHitBiller:
    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge

    async def answer(self, data: bytes) -> Reply:
        try:
            hit = CacheHit.model_validate_json(data)
        except ValidationError as exc:
            return errors.error_reply(errors.invalid_message(exc, "cache hit"))
        try:
            return (await self.bill(hit)).model_dump_json().encode(), None
        except errors.GatewayError as err:
            return errors.error_reply(err)

    async def bill(self, hit: CacheHit) -> CacheHitBilled:
        gateway = self.knowledge.view.gateways.get(hit.gateway_id)
        if gateway is None or gateway.tenant != hit.tenant or gateway.cache is None:
            raise errors.NotFound("No such gateway with a response cache.", code="gateway_not_found")
        publisher = self.knowledge.usage
        if publisher is None:
            raise errors.Unavailable("Usage publishing is not ready; try again shortly")
        line = GeneratedUsage.priced(skus.CACHE_HIT, gateway.cache.price, 1, skus.CACHE_HIT_DESCRIPTION)
        now = datetime.now(UTC)
        event = UsageEvent(
            request_id=hit.request_id,
            source="cache",
            tenant=hit.tenant,
            key_id=hit.key_id,
            gateway_id=gateway.id,
            upstream=gateway.upstream,
            model=f"cache:{hit.cached_request_id}",
            lines=[line],
            metadata=hit.metadata,
            started_at=now,
            latency_ms=0.0,
        )
        if not await publisher.durable([event], DURABLE_WITHIN):
            # The publisher keeps trying (within the stream's duplicate window), as for the worker.
            log.warning("a cache hit's usage is not stored yet", extra={"request_id": hit.request_id})
        return CacheHitBilled(lines=[line])
