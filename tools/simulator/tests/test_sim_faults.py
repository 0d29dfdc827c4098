"""Faults, latency and disconnects, as the SDK (and so the gateway) experiences them."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

if TYPE_CHECKING:
    from conftest import SimProcess


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_429_raises_rate_limit_error_with_retry_after(sim: SimProcess) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        sim.client().chat.completions.create(model="m", messages=ask("hi [sim fault=429 retry_after=7]"))

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert sim.last_request()["outcome"] == "429"


def test_500_raises_internal_server_error(sim: SimProcess) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sim.client().chat.completions.create(
            model="m", messages=ask("hi"), extra_headers={"x-sim-fault": "500"}
        )

    assert caught.value.status_code == 500
    assert caught.value.type == "server_error"
    assert sim.last_request()["outcome"] == "500"


def test_drop_mid_stream_raises_after_the_first_tokens(sim: SimProcess) -> None:
    received: list[str] = []
    stream = sim.client().chat.completions.create(
        model="m", messages=ask("hi [sim fault=drop drop_after=3 token_ms=5]"), stream=True
    )
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == "sim0 sim1 sim2"
    assert sim.last_request()["outcome"] == "drop"


def test_drop_without_pacing_still_cuts_the_stream(sim: SimProcess) -> None:
    # token_ms=0 takes the unpaced path; the cut must still come before finish_reason and [DONE].
    lines: list[str] = []
    body = {"model": "m", "messages": ask("hi [sim fault=drop drop_after=2]"), "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body) as response,
    ):
        lines.extend(line for line in response.iter_lines() if line)

    assert len(lines) == 3  # the role chunk and two words
    assert '"content":" sim1"' in lines[-1]
    assert sim.last_request()["outcome"] == "drop"


def test_drop_without_stream_closes_the_connection_without_a_response(sim: SimProcess) -> None:
    with pytest.raises(openai.APIConnectionError):
        sim.client().chat.completions.create(model="m", messages=ask("hi [sim fault=drop]"))

    assert sim.last_request()["outcome"] == "drop"


def test_hang_is_recorded_as_client_disconnected_when_the_client_times_out(sim: SimProcess) -> None:
    with pytest.raises(openai.APITimeoutError):
        sim.client(timeout=0.5).chat.completions.create(model="m", messages=ask("hi [sim fault=hang]"))

    sim.wait_for_last_outcome("client_disconnected")


def test_hang_shows_while_it_lasts_then_client_disconnected(sim: SimProcess) -> None:
    body = json.dumps({"model": "m", "messages": ask("[sim fault=hang]")}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", sim.port)) as raw:
        raw.sendall(head.encode() + b"content-length: %d\r\n\r\n" % len(body) + body)
        assert sim.wait_for_last_outcome("hang")["outcome"] == "hang"
    assert (
        sim.wait_for_last_outcome("client_disconnected")["body"]["messages"][0]["content"]
        == "[sim fault=hang]"
    )


def test_client_leaving_a_slow_stream_is_recorded_as_client_disconnected(sim: SimProcess) -> None:
    stream = sim.client().chat.completions.create(
        model="m", messages=ask("hi [sim tokens=500 token_ms=20]"), stream=True
    )
    with stream:
        first = [next(iter(stream)) for _ in range(3)]
    assert first[1].choices[0].delta.content == "sim0"

    record = sim.wait_for_last_outcome("client_disconnected")
    assert record["body"]["stream"] is True


def test_client_leaving_during_latency_is_recorded_as_client_disconnected(sim: SimProcess) -> None:
    with pytest.raises(openai.APITimeoutError):
        sim.client(timeout=0.3).chat.completions.create(model="m", messages=ask("[sim latency_ms=5000]"))

    sim.wait_for_last_outcome("client_disconnected", timeout=2.0)


def test_latency_delays_the_answer(sim: SimProcess) -> None:
    client = sim.client()
    started = time.monotonic()
    completion = client.chat.completions.create(model="m", messages=ask("[sim latency_ms=300 tokens=1]"))
    assert time.monotonic() - started >= 0.3
    assert completion.choices[0].message.content == "sim0"
    assert sim.last_request()["outcome"] == "completed"


def test_require_key_rejects_other_keys(start_sim: Callable[..., SimProcess]) -> None:
    sim = start_sim("--require-key", "sk-upstream-key")

    with pytest.raises(openai.AuthenticationError) as caught:
        sim.client(api_key="sk-wrong").chat.completions.create(model="m", messages=ask("hi"))
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sim.client(api_key="sk-wrong").models.list()

    completion = sim.client(api_key="sk-upstream-key").chat.completions.create(model="m", messages=ask("hi"))
    assert completion.choices[0].finish_reason == "stop"
    assert [r["outcome"] for r in sim.requests()] == ["401", "completed"]


def test_stall_streams_the_first_tokens_then_nothing_until_the_client_leaves(sim: SimProcess) -> None:
    lines: list[str] = []
    body = {"model": "m", "messages": ask("hi [sim fault=stall drop_after=2]"), "stream": True}
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body, timeout=0.5) as response,
    ):
        lines.extend(line for line in response.iter_lines() if line)

    assert len(lines) == 3 and '"content":" sim1"' in lines[-1]  # the role chunk and two words
    sim.wait_for_last_outcome("client_disconnected")


def test_stall_without_stream_sends_the_headers_then_nothing(sim: SimProcess) -> None:
    body = {"model": "m", "messages": ask("hi [sim fault=stall]")}
    with httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body, timeout=0.5) as response:
        assert response.status_code == 200
        assert sim.last_request()["outcome"] == "stall"
        with pytest.raises(httpx.ReadTimeout):
            response.read()
    sim.wait_for_last_outcome("client_disconnected")


def test_malformed_answers_are_a_200_the_client_cannot_parse(sim: SimProcess) -> None:
    whole = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": "m", "messages": ask("[sim fault=malformed]")},
    )
    assert whole.status_code == 200
    with pytest.raises(ValueError):
        whole.json()
    streamed = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": "m", "messages": ask("[sim fault=malformed]"), "stream": True},
    )
    assert streamed.status_code == 200 and streamed.text.startswith("data: {")
    with pytest.raises(ValueError):
        json.loads(streamed.text.removeprefix("data: "))
    assert sim.last_request()["outcome"] == "malformed"


def test_fault_times_faults_only_the_first_requests_with_that_message(sim: SimProcess) -> None:
    client = sim.client()
    text = f"once {time.monotonic_ns()} [sim fault=500 fault_times=2 tokens=2]"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=ask(text))
    answer = client.chat.completions.create(model="m", messages=ask(text))
    assert answer.choices[0].message.content == "sim0 sim1"
    assert [r["outcome"] for r in sim.requests()[-3:]] == ["500", "500", "completed"]


def test_fault_model_faults_only_requests_for_that_model(sim: SimProcess) -> None:
    client = sim.client()
    text = "scoped [sim fault=429 fault_model=flaky tokens=1]"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="flaky", messages=ask(text))
    assert (
        client.chat.completions.create(model="steady", messages=ask(text)).choices[0].message.content
        == "sim0"
    )
