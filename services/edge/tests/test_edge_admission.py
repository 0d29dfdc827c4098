"""The edge's admission limit (`AIGW_MAX_INFLIGHT_REQUESTS`): the edge served by uvicorn against a
real nats-server, the test playing router and worker and holding the admitted requests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from aigw_contracts.errors import Unavailable
from aigw_contracts.events import EventKind
from aigw_devstack import NatsServer
from aigw_edge.admission import Admission

from .conftest import FakeRouter, completion, eventually, serve_edge

MESSAGES: Any = [{"role": "user", "content": "hello"}]


def test_a_place_is_given_back_however_the_request_ends() -> None:
    admission = Admission(1)
    with pytest.raises(RuntimeError), admission.admit():
        raise RuntimeError("the request failed")
    with admission.admit():
        assert admission.in_flight == 1
        with pytest.raises(Unavailable) as refused, admission.admit():
            pass
    assert refused.value.code == "overloaded" and refused.value.retry_after == 1
    assert admission.in_flight == 0


async def test_requests_beyond_the_limit_are_refused_at_once_with_retry_after(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    release = asyncio.Event()

    async def hold(envelope: Any, r: FakeRouter) -> None:
        await release.wait()
        await r.emit(envelope, EventKind.FINAL, 0, completion(envelope.request_id, "done"))

    router.handler = hold
    async with serve_edge(nats_server.url, tmp_path, max_inflight_requests=2) as edge:
        client = edge.client()
        held = [
            asyncio.create_task(client.chat.completions.create(model="m", messages=MESSAGES))
            for _ in range(2)
        ]
        await eventually(lambda: len(router.envelopes) == 2, 5.0, "two requests in flight")
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert time.monotonic() - started < 0.5  # at once, not once a place is free
        assert refused.value.status_code == 503 and refused.value.code == "overloaded"
        assert refused.value.response.headers["retry-after"] == "1"
        assert len(router.envelopes) == 2  # the refused request never reached the bus
        release.set()
        answers = await asyncio.gather(*held)
        assert [a.choices[0].message.content for a in answers] == ["done", "done"]
        again = await client.chat.completions.create(model="m", messages=MESSAGES)  # places given back
        assert again.choices[0].message.content == "done"
