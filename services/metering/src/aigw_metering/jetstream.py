"""The streams and the durable consumer metering reads, declared from `aigw_contracts.streams`.

Streams are created when missing and otherwise left as they are: the worker creates the usage
stream the same way, and operators may have tuned a live one (replicas, limits) on purpose.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from aigw_contracts import streams, subjects

from .settings import MeteringSettings

log = logging.getLogger("aigw.metering")


def usage_stream(settings: MeteringSettings) -> StreamConfig:
    return StreamConfig(
        name=streams.USAGE_STREAM,
        subjects=list(streams.USAGE_SUBJECTS),
        retention=RetentionPolicy.LIMITS,  # other teams read the same events with their own consumers
        storage=StorageType(streams.USAGE_STORAGE),
        discard=DiscardPolicy(streams.USAGE_DISCARD),
        duplicate_window=streams.USAGE_DUPLICATE_WINDOW_S,
        max_age=settings.metering_stream_max_age_s,
        num_replicas=settings.metering_stream_replicas,
    )


def dead_letter_stream(settings: MeteringSettings) -> StreamConfig:
    return StreamConfig(
        name=streams.USAGE_DEAD_STREAM,
        subjects=list(streams.USAGE_DEAD_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=streams.USAGE_DUPLICATE_WINDOW_S,
        max_age=streams.USAGE_DEAD_MAX_AGE_S,
        num_replicas=settings.metering_stream_replicas,
    )


def consumer(
    settings: MeteringSettings,
    durable: str = subjects.METERING_DURABLE,
    filter_subject: str = subjects.USAGE_WILDCARD,
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,  # not ALL: another replica's unstored events must not be acked
        ack_wait=settings.metering_ack_wait_s,
        max_deliver=-1,  # an outage must never exhaust deliveries: usage is never given up on
        # Room for the batch being filled, one queued and one being inserted.
        max_ack_pending=max(4 * settings.metering_batch_lines, 1_000),
        max_waiting=64,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
        return
    except NotFoundError:
        pass
    try:
        await js.add_stream(config)
        log.info("stream created", extra={"stream": config.name})
    except BadRequestError as err:
        if err.err_code != 10058:  # created meanwhile by another service: fine
            raise


async def ensure_consumer(
    js: JetStreamContext,
    settings: MeteringSettings,
    stream: str = streams.USAGE_STREAM,
    durable: str = subjects.METERING_DURABLE,
) -> None:
    """The usage stream's durable, or (with `stream` and `durable`) the request log's."""
    wildcard = subjects.REQUESTS_WILDCARD if stream == streams.REQUESTS_STREAM else subjects.USAGE_WILDCARD
    config = consumer(settings, durable, wildcard)
    try:
        await js.add_consumer(stream, config)
    except BadRequestError as err:
        # An existing durable whose fixed fields differ (changed by an operator): use it as it is.
        log.warning("could not update the metering consumer", extra={"error": err.description})
