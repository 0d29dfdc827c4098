"""A service's model calls (`workercall`) and the cancels that stop the work held for a request
(`cancels`): their pure parts (the bus side is tested with the router and retrieval)."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from aigw_contracts import (
    CancelRequest,
    ChatCompletionRequest,
    ChatEnvelope,
    UpstreamTarget,
    errors,
    events,
    subjects,
)
from aigw_contracts import headers as hdr
from aigw_contracts.config import Prices
from aigw_devstack import NatsServer
from aigw_runtime.cancels import Cancels
from aigw_runtime.workercall import ANSWER_GRACE, answer_wait, ask_worker, completion_of, model_call

TARGET = UpstreamTarget(
    id="@sim/sim-model", kind="catalog", provider="sim", model="sim", base_url="http://x", prices=Prices()
)


def _envelope(deadline_in: float) -> ChatEnvelope:
    return ChatEnvelope(
        request_id="r1",
        tenant="t1",
        key_id="k1",
        reply="aigw.v1.reply.e.r1",
        deadline=time.time() + deadline_in,
        request=ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}]),
    )


def test_a_model_call_ends_at_its_limit_or_the_requests_deadline_whichever_comes_first() -> None:
    messages = [{"role": "user", "content": "rate this"}]
    bounded = model_call(_envelope(30), TARGET, messages, "routing", limit=2.0)
    assert 1.5 < bounded.remaining() <= 2.0
    assert bounded.route is not None and "limit" not in bounded.route.body  # not an upstream parameter
    assert model_call(_envelope(0.5), TARGET, messages, "routing", limit=2.0).remaining() <= 0.5
    assert model_call(_envelope(30), TARGET, messages, "routing").remaining() > 29
    assert answer_wait(bounded) == pytest.approx(bounded.remaining() + ANSWER_GRACE, abs=0.05)


def test_no_worker_to_call_is_a_retryable_503() -> None:
    with pytest.raises(errors.Unavailable) as err:
        completion_of({hdr.NATS_STATUS: hdr.NO_RESPONDERS}, b"", ("Routing failed", "model"))
    assert err.value.status == 503 and err.value.retry_after == 1
    assert err.value.message.startswith("Routing failed")


def test_a_workers_error_keeps_its_status_and_retry_after() -> None:
    event, payload = events.error_event(errors.RateLimited("slow down", retry_after=7), 0)
    with pytest.raises(errors.GatewayError) as err:
        completion_of(event, payload, ("Reranking failed", "knowledge.reranker"))
    assert err.value.status == 429 and err.value.retry_after == 7
    assert err.value.param == "knowledge.reranker"


async def test_a_cancel_stops_the_task_holding_its_request_and_is_remembered_if_early() -> None:
    cancels = Cancels(remember=2)
    task = asyncio.get_running_loop().create_task(asyncio.sleep(30))
    cancels.track("held", task)
    assert len(cancels) == 1
    cancels.on_cancel(CancelRequest(request_id="held").model_dump_json().encode())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancels.stopped == 1 and len(cancels) == 0  # forgotten once done

    cancels.on_cancel(b"not json")  # dropped, never raised
    for request_id in ("a", "b", "c"):
        cancels.on_cancel(
            CancelRequest(request_id=request_id, reason="deadline_exceeded").model_dump_json().encode()
        )
    assert cancels.cancelled_before("a") is None  # the oldest beyond `remember` is forgotten
    assert cancels.cancelled_before("c") == "deadline_exceeded"
    assert cancels.cancelled_before("c") is None  # taken once


@pytest.mark.usefixtures("tracing_on")
async def test_a_traced_model_call_carries_the_requests_trace_context_as_nats_headers(
    nats_server: NatsServer,
) -> None:
    call = model_call(_envelope(5), TARGET, [{"role": "user", "content": "rate this"}], "routing")
    call.trace = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "v=1",
    }
    nc = await nats.connect(nats_server.url)
    try:

        async def worker(msg: nats.aio.msg.Msg) -> None:
            seen.append(msg)
            hdrs, payload = events.error_event(errors.Unavailable("no model here"), 0)
            await nc.publish(msg.reply, payload, headers=hdrs)

        seen: list[nats.aio.msg.Msg] = []
        await nc.subscribe(subjects.WORKER_CHAT, cb=worker)
        await nc.flush()
        await ask_worker(nc, call, 5)
        (msg,) = seen
        assert msg.headers == call.trace and ChatEnvelope.model_validate_json(msg.data).trace == call.trace
    finally:
        await nc.close()
