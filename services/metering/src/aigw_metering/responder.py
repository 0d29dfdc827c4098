"""Usage reports over NATS request-reply: `UsageQuery` in, `UsageReport` out (see its docstring);
and the request log: `RequestLogQuery` in, `RequestLogReport` out.

Metering answers because it owns the store (a chDB path opens in one process only). Reports are
read in a thread, on the store's reader client, so they never wait for an insert.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from aigw_contracts import errors
from aigw_contracts.requestlog import RequestLogQuery
from aigw_contracts.usage import UsageQuery

from . import queries, requestlog
from .store import Store, StoreUnavailable

log = logging.getLogger("aigw.metering")


async def answer(store: Store, data: bytes) -> tuple[bytes, dict[str, str] | None]:
    """The reply (payload, headers) to one query; headers only on an error."""
    try:
        query = UsageQuery.model_validate_json(data)
    except ValidationError as err:
        return errors.error_reply(errors.invalid_message(err, "usage query"))
    if not store.is_open:
        return errors.error_reply(errors.Unavailable("The usage store is unavailable; try again shortly"))
    try:
        report = await asyncio.to_thread(queries.run, store, query)
    except StoreUnavailable as err:
        log.warning("usage query failed", extra={"error": str(err)})
        return errors.error_reply(errors.Unavailable("The usage store is unavailable; try again shortly"))
    return report.model_dump_json().encode(), None


async def answer_requests(store: Store, data: bytes) -> tuple[bytes, dict[str, str] | None]:
    """The reply to one request log query (`GET /v1/requests`)."""
    try:
        query = RequestLogQuery.model_validate_json(data)
    except ValidationError as err:
        return errors.error_reply(errors.invalid_message(err, "request log query"))
    if not store.is_open:
        return errors.error_reply(errors.Unavailable("The usage store is unavailable; try again shortly"))
    try:
        report = await asyncio.to_thread(requestlog.run, store, query)
    except StoreUnavailable as err:
        log.warning("request log query failed", extra={"error": str(err)})
        return errors.error_reply(errors.Unavailable("The usage store is unavailable; try again shortly"))
    return report.model_dump_json().encode(), None
