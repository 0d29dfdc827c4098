"""A process that dies holding a request is noticed within seconds, not at the deadline.

The stack runs with production-like timeouts (a 300 s request deadline, a 120 s stream idle
limit): what ends these requests early is the holder's heartbeat going quiet (`AIGW_HOLDER_TIMEOUT`,
3.5 s), as it would in production. Each test kills one service with SIGKILL, then starts it again
and shows the next request succeeds.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_devstack.stack import Stack
from tests.conftest import eventually, start_stack

SLOW = "[sim tokens=400 token_ms=20]"  # about 8 s of answer: far longer than the holder timeout
WITHIN = 6.0  # holder timeout 3.5 s + heartbeat interval + sweep tick + a margin for a busy machine


@pytest.fixture(scope="module")
def prod_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Production-like deadlines: only the holder's silence can end these requests early.
    long_timeouts = {
        "AIGW_REQUEST_TIMEOUT": "300",
        "AIGW_STREAM_IDLE_TIMEOUT": "120",
        "AIGW_UPSTREAM_IDLE_TIMEOUT": "60",
    }
    stack = start_stack(tmp_path_factory.mktemp("holder"), env=long_timeouts)
    yield stack
    stack.stop()


def _client(stack: Stack) -> OpenAI:
    assert stack.demo is not None
    return OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=60)


def _kill_after(stack: Stack, name: str, delay: float) -> threading.Thread:
    def kill() -> None:
        time.sleep(delay)
        stack.procs[name].signal(signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _restart(stack: Stack, name: str, argv: list[str]) -> None:
    proc = stack.procs.pop(name)
    proc.stop()  # reaps the killed process
    stack.start_service(name, argv)


def _answers(client: OpenAI, model: str = "demo") -> bool:
    try:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "back?"}])
    except openai.APIError:
        return False
    return bool(reply.choices[0].message.content)


def test_a_worker_killed_mid_stream_ends_the_stream_within_seconds(prod_like: Stack) -> None:
    client = _client(prod_like)
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": f"long {SLOW}"}], stream=True
    )
    received = 0
    killed_at = 0.0
    with pytest.raises(openai.APIError) as err:
        for _chunk in stream:
            received += 1
            if received == 3:
                prod_like.procs["worker-0"].signal(signal.SIGKILL)
                killed_at = time.monotonic()
    assert received >= 3 and killed_at
    assert time.monotonic() - killed_at < WITHIN
    assert err.value.code == "holder_lost"
    _restart(prod_like, "worker-0", ["aigw-worker"])
    eventually(lambda: _answers(client), 10.0, "an answer from the restarted worker")


def test_a_worker_killed_during_a_whole_answer_is_a_fast_retryable_503(prod_like: Stack) -> None:
    client = _client(prod_like)
    killer = _kill_after(prod_like, "worker-0", 0.5)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": f"long {SLOW}"}])
    killer.join()
    assert time.monotonic() - started < 0.5 + WITHIN
    assert err.value.status_code == 503 and err.value.code == "holder_lost"
    assert err.value.response.headers.get("retry-after") == "1"  # the SDKs retry it by themselves
    _restart(prod_like, "worker-0", ["aigw-worker"])
    eventually(lambda: _answers(client), 10.0, "an answer from the restarted worker")


def test_a_router_killed_while_its_classifier_runs_is_noticed_within_seconds(prod_like: Stack) -> None:
    assert prod_like.demo is not None
    admin = httpx.Client(
        base_url=prod_like.base_url, headers={"Authorization": f"Bearer {prod_like.demo.key}"}, timeout=20
    )
    tiers = {level: "@sim/sim-model" for level in ("classifier", "low", "medium", "high")}
    created: Any = admin.post(
        "/gateways", json={"name": "auto-holder", "upstream": "@sim/sim-model", "routing": tiers}
    )
    assert created.status_code == 201, created.text
    client = _client(prod_like)
    eventually(lambda: _answers(client, "auto-holder"), 10.0, "the auto-routing gateway routable")
    # The classifier call itself is slow to start (the simulator reads the directive in the message it rates).
    killer = _kill_after(prod_like, "router-0", 0.5)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="auto-holder", messages=[{"role": "user", "content": "rate me [sim latency_ms=8000]"}]
        )
    killer.join()
    assert time.monotonic() - started < 0.5 + WITHIN
    assert err.value.status_code == 503
    _restart(prod_like, "router-0", ["aigw-router"])
    eventually(lambda: _answers(client), 10.0, "an answer through the restarted router")
