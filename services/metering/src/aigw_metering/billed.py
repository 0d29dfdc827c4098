"""Whether a request was billed: the edge asks before it tells a client whose answer was lost.

A request whose holder died, or whose answer never reached the edge, was billed if (and only if)
its usage reached the usage stream: the worker stores a whole answer's usage before its final
event. Metering sees every event of that stream, so it answers from the requests it received lately
(`Consumer.recent`, stored or still being batched) and, for older ones, from the store.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from aigw_contracts import errors
from aigw_contracts.usage import BilledAnswer, BilledQuery, UsageQuery

from . import queries
from .consumer import Consumer
from .store import Store, StoreUnavailable


async def answer(consumer: Consumer | None, store: Store, data: bytes) -> tuple[bytes, None]:
    try:
        query = BilledQuery.model_validate_json(data)
    except ValidationError as err:
        raise errors.invalid_message(err, "billed query") from None
    billed = consumer is not None and (query.tenant, query.request_id) in consumer.recent
    if not billed:
        if not store.is_open:
            raise errors.Unavailable("The usage store is unavailable; try again shortly")
        report_query = UsageQuery(tenant=query.tenant, request=query.request_id, group_by=["request"])
        try:
            report = await asyncio.to_thread(queries.run, store, report_query)
        except StoreUnavailable as err:
            raise errors.Unavailable("The usage store is unavailable; try again shortly") from err
        billed = bool(report.rows)
    return BilledAnswer(billed=billed).model_dump_json().encode(), None
