"""A service's own model call through the inference workers: one non-stream completion, by request-reply.

Services that need a model on the request path (retrieval's query rewriting and reranking, the
router's complexity routing) do not call upstreams themselves: the workers hold the providers'
credentials, price the call by its `RoutedCall.purpose` and meter it as a usage source of its own
under the request's id. The caller gets the completion's text and its priced lines, to list in the
final response's `generated_usage`.

A model call on the request path is an aid, not the answer: the caller bounds it (`model_call`'s
`limit`, e.g. the router's `AIGW_CLASSIFIER_TIMEOUT`) and goes on without it when it is slow. The
bound travels as the call's own deadline, so the worker stops the call itself when it passes (its
upstream request is closed, nothing is billed unless the upstream answered) and says so with an
error event; the caller waits `ANSWER_GRACE` longer for that event. Stopping the call in the worker
rather than abandoning it matters twice: a late answer would be billed without being used, and a
worker still running the call would take the request itself, which carries the same request id,
for a duplicate. (Nor can the caller broadcast a cancel for the call: cancels name a request id,
and that would cancel the request it goes on with.)

A request cancelled by the edge (its client left) cancels the task waiting here
(`aigw_runtime.cancels`); the worker hears the same cancel and stops the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Literal

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from aigw_contracts import errors, subjects
from aigw_contracts import headers as hdr
from aigw_contracts.api import ChatCompletionRequest, GeneratedUsage
from aigw_contracts.events import EventKind
from aigw_contracts.messages import ChatEnvelope, RoutedCall, UpstreamTarget

from .bus import DEFAULT_MAX_PAYLOAD, check_size
from .telemetry import nats_headers

Purpose = Literal["query_rewrite", "rerank", "routing"]

# The status of a model call the worker stopped on the edge's cancel (nginx's "client closed"): the
# request it was made for is over too, whichever of the two the caller heard first.
CANCELLED = 499

# Seconds a caller waits past a model call's deadline for the worker's own error event, which says
# the call was stopped (so no worker still runs it); past that the worker is presumed gone.
ANSWER_GRACE = 1.0


def model_call(
    envelope: ChatEnvelope,
    target: UpstreamTarget,
    messages: list[dict[str, Any]],
    purpose: Purpose,
    *,
    limit: float | None = None,
    **parameters: Any,
) -> ChatEnvelope:
    """The envelope of a model call made for `envelope`'s request: same request id (so the worker
    meters it under it), tenant, key, deadline and trace; `temperature` 0 unless given. With
    `limit`, the call's deadline is at most `limit` seconds away: the worker stops it then."""
    deadline = envelope.deadline if limit is None else min(envelope.deadline, time.time() + limit)
    return ChatEnvelope(
        request_id=envelope.request_id,
        tenant=envelope.tenant,
        key_id=envelope.key_id,
        key_kind=envelope.key_kind,
        reply="",  # set by `ask_worker`
        deadline=deadline,
        trace=envelope.trace,
        request=ChatCompletionRequest(model=target.id, messages=messages, metadata=envelope.request.metadata),
        route=RoutedCall(
            gateway_id=envelope.route.gateway_id if envelope.route else None,
            upstream=target,
            body={"messages": messages, "temperature": 0, **parameters},
            response_model=target.id,
            purpose=purpose,
        ),
    )


def answer_wait(call: ChatEnvelope) -> float:
    """How long to wait for a model call's answer: until its deadline, and the grace for the
    worker's error event saying it stopped the call there."""
    return call.remaining() + ANSWER_GRACE


async def ask_worker(nc: NatsClient, envelope: ChatEnvelope, within: float) -> tuple[dict[str, str], bytes]:
    """Publish `envelope` to the worker pool; its first (and, non-stream, only) event. A missing
    worker pool comes back as a no-responders status on the same inbox (a 503 at once). Cancelling
    the awaiting task abandons the call here (see the module docstring for the worker's side)."""
    answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Msg) -> None:
        if (msg.headers or {}).get(hdr.EVENT) == EventKind.ALIVE:
            return  # the worker's heartbeat, not its answer
        if not answer.done():
            answer.set_result(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_event)
    try:
        envelope.reply = inbox
        payload = envelope.forward_json()
        check_size(payload, nc.max_payload or DEFAULT_MAX_PAYLOAD, "A model call of the gateway")
        await nc.publish(subjects.WORKER_CHAT, payload, reply=inbox, headers=nats_headers(envelope.trace))
        msg = await asyncio.wait_for(answer, max(within, 0.001))
    except TimeoutError:
        raise errors.DeadlineExceeded(
            "A model call of the gateway did not finish before the deadline"
        ) from None
    finally:
        await sub.unsubscribe()
    return dict(msg.headers or {}), msg.data


def completion_of(
    event: dict[str, str], payload: bytes, failure: tuple[str, str | None]
) -> tuple[str, list[GeneratedUsage]]:
    """The text and priced lines of a worker's final event; its error as a `GatewayError` whose
    message starts with `failure[0]` and names the parameter `failure[1]`."""
    prefix, param = failure
    if event.get(hdr.EVENT) != EventKind.FINAL:
        if hdr.EVENT not in event and event.get(hdr.NATS_STATUS) == hdr.NO_RESPONDERS:
            # No worker subscribed: a 503 at once, retryable like the request's own would be.
            raise errors.Unavailable(
                f"{prefix}: no inference worker is available; try again shortly", param=param, retry_after=1
            )
        status = int(event.get(hdr.STATUS) or event.get(hdr.NATS_STATUS) or 502)
        try:
            detail = json.loads(payload)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = "no answer"
        err = errors.error_for_status(status, f"{prefix}: {detail}", param=param)
        with contextlib.suppress(KeyError, ValueError):
            err.retry_after = float(event[hdr.RETRY_AFTER])  # an upstream 429's, for the client
        raise err
    body: dict[str, Any] = json.loads(payload)
    content = body["choices"][0]["message"].get("content") or ""
    lines = [GeneratedUsage.model_validate(line) for line in body["generation_context"]["generated_usage"]]
    return content, lines
