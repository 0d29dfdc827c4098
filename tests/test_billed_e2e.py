"""What a client is told about a lost answer equals what was billed for it.

The worker stores a whole answer's usage before it sends the final event; if the answer is then
lost (the worker dies in between, the bus breaks), the request is billed and the edge says so: 502
`answer_undelivered` with `x-should-retry: false` (a retry would be billed again). A request whose
holder vanished before anything was billed gets the retryable 503 `holder_lost`. The edge asks
metering, which saw the usage stream, before it answers.

Here the test itself plays the worker (the real one is stopped), with the worker's own bus user,
so it can vanish at exactly the point each case needs.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import nats
import openai
import pytest
from nats.aio.msg import Msg
from openai import OpenAI

from aigw_contracts import ChatEnvelope, GeneratedUsage, UsageEvent, skus, streams, subjects
from aigw_contracts.events import EventKind, event_headers
from aigw_devstack.stack import Stack
from aigw_runtime import natsauth
from tests.conftest import start_stack


@pytest.fixture(scope="module")
def vanishing_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("billed"), with_metering=True, env={"AIGW_REQUEST_TIMEOUT": "60"}
    )
    stack.stop_service("worker-0")
    ready = threading.Event()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()

    async def play() -> None:
        url = stack.nats_url("worker")
        nc = await nats.connect(url, inbox_prefix=natsauth.inbox_prefix_of(url))
        js = nc.jetstream()

        async def on_chat(msg: Msg) -> None:
            envelope = ChatEnvelope.routed(msg.data)
            content = str(envelope.client_messages()[-1].content)
            if "mid-stream" in content:  # part of the answer reached the client first
                first = {
                    "id": f"chatcmpl-{envelope.request_id}",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "sim-model",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
                }
                hdrs = event_headers(EventKind.DELTA, 0)
                await nc.publish(envelope.reply, json.dumps(first).encode(), headers=hdrs)
            if "bill" in content:  # the usage is stored, the final event never sent
                event = UsageEvent(
                    request_id=envelope.request_id,
                    source="inference",
                    tenant=envelope.tenant,
                    key_id=envelope.key_id,
                    upstream="@sim/sim-model",
                    model="sim-model",
                    lines=[GeneratedUsage.priced(skus.CHAT_OUT, Decimal("0.000002"), 3, "answer")],
                    started_at=datetime.now(UTC),
                )
                await js.publish(
                    subjects.usage_subject(event.tenant),
                    event.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": event.msg_id()},
                    stream=streams.USAGE_STREAM,
                )
            # "vanish": nothing at all, as a worker killed before it billed anything

        await nc.subscribe(subjects.WORKER_CHAT, queue=subjects.WORKER_QUEUE, cb=on_chat)
        await nc.flush()
        await nc.flush()
        ready.set()
        await stop.wait()
        await nc.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(play(),), daemon=True)
    thread.start()
    assert ready.wait(15)
    yield stack
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    stack.stop()


def _client(stack: Stack) -> OpenAI:
    assert stack.demo is not None
    return OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=30)


def test_a_billed_answer_that_never_arrived_is_a_502_not_to_be_retried(vanishing_worker: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        _client(vanishing_worker).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "bill-then-vanish"}]
        )
    assert err.value.status_code == 502 and err.value.code == "answer_undelivered"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert "billed" in err.value.message


def test_a_request_lost_before_anything_was_billed_is_a_retryable_503(vanishing_worker: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        _client(vanishing_worker).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "vanish"}]
        )
    assert err.value.status_code == 503 and err.value.code == "holder_lost"
    assert err.value.response.headers.get("x-should-retry") != "false"


def test_a_stream_whose_billed_end_never_arrived_says_so_in_its_error_chunk(vanishing_worker: Stack) -> None:
    stream = _client(vanishing_worker).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "bill mid-stream, then vanish"}], stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["Hel"]
    assert err.value.code == "answer_undelivered" and "billed" in err.value.message
