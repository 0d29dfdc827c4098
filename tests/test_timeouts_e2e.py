"""Upstream timeouts and retries through the real system (aigw issue 10): a gateway whose upstream
hangs answers from its fallback within its time-to-first-token timeout, far inside the request's
deadline, stream and not, and ClickHouse holds exactly the usage the answer listed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_contracts import ConfigSnapshot, Gateway, Timeouts
from aigw_contracts.ids import uuid7
from aigw_devstack.stack import SIM_UPSTREAM, Stack
from tests.conftest import TEST_ENV, billed_lines, eventually, start_stack, stored_lines

TTFT = 1.0  # the gateway's time-to-first-token timeout
DEADLINE = 30.0  # the request's (the edge's AIGW_REQUEST_TIMEOUT): far beyond what the answer takes
IDLE = float(TEST_ENV["AIGW_UPSTREAM_IDLE_TIMEOUT"])  # a stream's longest silence (worker setting)
FLAKY = "@sim/flaky"  # the simulator as model "flaky", which `[sim fault_model=flaky …]` faults
STEADFAST = Gateway(
    id=uuid7(),
    name="steadfast",
    tenant="demo",
    upstream=FLAKY,
    fallbacks=[SIM_UPSTREAM],
    timeouts=Timeouts(ttft=TTFT),
)
# No fallback and no timeouts of its own: only the request's deadline ends a hung call.
HANGING = Gateway(id=uuid7(), name="hanging", tenant="demo", upstream=FLAKY)


def _config(stack: Stack) -> None:
    stack.add_to_config(
        ConfigSnapshot(upstreams=[stack.sim_upstream("flaky")], gateways=[STEADFAST, HANGING])
    )


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("timeouts"),
        with_metering=True,
        env={"AIGW_REQUEST_TIMEOUT": str(DEADLINE), "AIGW_STREAM_IDLE_TIMEOUT": "20"},
        start_hooks=[_config],
    )
    yield stack
    stack.stop()


@pytest.mark.chaos
@pytest.mark.parametrize("stream", [False, True])
def test_a_gateway_whose_upstream_hangs_answers_from_its_fallback_within_its_ttft_timeout(
    guarded: Stack, stream: bool
) -> None:
    assert guarded.demo is not None
    client = OpenAI(base_url=guarded.base_url, api_key=guarded.demo.key, max_retries=0, timeout=DEADLINE)
    http = httpx.Client(
        base_url=guarded.base_url, headers={"Authorization": f"Bearer {guarded.demo.key}"}, timeout=20
    )
    messages: Any = [
        {"role": "user", "content": f"{uuid7()} anyone? [sim fault=hang fault_model=flaky tokens=5]"}
    ]
    started = time.monotonic()
    if stream:
        raw = client.chat.completions.with_raw_response.create(
            model="steadfast", messages=messages, stream=True
        )
        chunks = list(raw.parse())
        elapsed = time.monotonic() - started
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        models = {c.model for c in chunks}
        request_id = chunks[0].id
        lines = chunks[-1].model_extra["generation_context"]["generated_usage"]  # type: ignore[index]
    else:
        raw = client.chat.completions.with_raw_response.create(model="steadfast", messages=messages)
        answer = raw.parse()
        elapsed = time.monotonic() - started
        text = answer.choices[0].message.content or ""
        models = {answer.model}
        request_id = answer.id
        lines = answer.model_extra["generation_context"]["generated_usage"]  # type: ignore[index]

    assert TTFT <= elapsed < TTFT + 2.0, elapsed  # the TTFT timeout, not the 30 s deadline
    assert raw.headers["x-aigw-fallback"] == SIM_UPSTREAM and models == {SIM_UPSTREAM}
    assert text == "sim0 sim1 sim2 sim3 sim4"
    assert all(line["description"].endswith(f"'{SIM_UPSTREAM}'") for line in lines)
    # the hung attempt billed nothing; the answer's lines are exactly what is stored
    eventually(
        lambda: stored_lines(http, request_id) == billed_lines(lines),
        15.0,
        "the answer's lines in ClickHouse",
    )


def _answer(
    client: OpenAI, model: str, text: str, stream: bool
) -> tuple[Any, str, list[dict[str, Any]], str]:
    """(raw response, the answer's text, its usage lines, its request id)."""
    messages: Any = [{"role": "user", "content": text}]
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=stream)
    if stream:
        chunks = list(raw.parse())  # type: ignore[call-overload]
        said = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw, said, chunks[-1].model_extra["generation_context"]["generated_usage"], chunks[0].id
    answer = raw.parse()  # type: ignore[union-attr]
    lines = answer.model_extra["generation_context"]["generated_usage"]
    return raw, answer.choices[0].message.content or "", lines, answer.id


# A reset before the answer's headers is possible only for a whole answer: a stream's headers and
# first event (the role) come at once, and a reset after them is mid-stream (the next test).
BEFORE_FIRST_TOKEN = [
    (fault, stream)
    for fault in ("fault=500", "fault=429 retry_after=0", "fault=malformed", "fault=drop drop_after=0")
    for stream in (False, True)
    if not (stream and "drop" in fault)
]


@pytest.mark.chaos
@pytest.mark.parametrize(("fault", "stream"), BEFORE_FIRST_TOKEN)
def test_upstream_faults_before_the_first_token_are_answered_by_the_fallback_and_billed_once(
    guarded: Stack, fault: str, stream: bool
) -> None:
    assert guarded.demo is not None
    client = OpenAI(base_url=guarded.base_url, api_key=guarded.demo.key, max_retries=0, timeout=DEADLINE)
    http = httpx.Client(
        base_url=guarded.base_url, headers={"Authorization": f"Bearer {guarded.demo.key}"}, timeout=20
    )
    started = time.monotonic()
    raw, text, lines, request_id = _answer(
        client, "steadfast", f"{uuid7()} [sim {fault} fault_model=flaky tokens=4]", stream
    )
    assert time.monotonic() - started < 2.0  # a retry's backoff at most, then the fallback
    assert raw.headers["x-aigw-fallback"] == SIM_UPSTREAM and text == "sim0 sim1 sim2 sim3"
    # the failed attempts billed nothing; the fallback's answer is billed once, as the client was told
    eventually(lambda: stored_lines(http, request_id) == billed_lines(lines), 15.0, "the lines in ClickHouse")


@pytest.mark.chaos
@pytest.mark.parametrize(
    "fault", ["fault=stall drop_after=2", "fault=drop drop_after=2"], ids=["stall", "reset"]
)
def test_a_stream_that_breaks_after_its_first_tokens_ends_with_an_error_event_within_the_idle_timeout(
    guarded: Stack, fault: str
) -> None:
    """Once tokens reached the client nothing is retried (two answers would mix): the stream ends
    with an OpenAI-shaped error event, a stalled one after the upstream idle timeout."""
    assert guarded.demo is not None
    client = OpenAI(base_url=guarded.base_url, api_key=guarded.demo.key, max_retries=0, timeout=DEADLINE)
    started = time.monotonic()
    said: list[str] = []
    with pytest.raises(openai.APIError) as broken:
        for chunk in client.chat.completions.create(
            model="steadfast",
            messages=[{"role": "user", "content": f"{uuid7()} [sim {fault} fault_model=flaky tokens=20]"}],
            stream=True,
        ):
            said.extend(c.delta.content or "" for c in chunk.choices)
    elapsed = time.monotonic() - started
    assert "".join(said).startswith("sim0 sim1")
    if "stall" in fault:
        assert broken.value.code == "deadline_exceeded" and elapsed < IDLE + 1.5, elapsed
    else:
        assert broken.value.code == "upstream_error" and elapsed < 1.5, elapsed


HANG: Any = [{"role": "user", "content": "still there? [sim fault=hang fault_model=flaky]"}]


@pytest.mark.chaos
def test_the_sdks_timeout_bounds_a_whole_answer_and_the_gateway_answers_inside_it(guarded: Stack) -> None:
    """OpenAI's SDK sends its read timeout (`x-stainless-read-timeout`): with 2 s, the gateway's
    504 comes before the client's own timeout, not at the gateway's 30 s deadline."""
    assert guarded.demo is not None
    client = OpenAI(base_url=guarded.base_url, api_key=guarded.demo.key, max_retries=0, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="hanging", messages=HANG)
    elapsed = time.monotonic() - started
    # The gateway's 504, not the SDK's own timeout error: answered a little before it gives up.
    assert caught.value.status_code == 504 and caught.value.code == "deadline_exceeded"
    assert 1.5 < elapsed < 3.0, elapsed  # not the gateway's 30 s


@pytest.mark.chaos
def test_x_aigw_timeout_bounds_a_stream_and_a_bad_value_is_refused(guarded: Stack) -> None:
    assert guarded.demo is not None
    client = OpenAI(base_url=guarded.base_url, api_key=guarded.demo.key, max_retries=0, timeout=DEADLINE)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="hanging", messages=HANG, stream=True, extra_headers={"x-aigw-timeout": "1.5"}
        )
    elapsed = time.monotonic() - started
    assert caught.value.status_code == 504 and 1.2 < elapsed < 2.5, elapsed
    # The SDK's read timeout bounds only the gaps of a stream: not the stream's whole time.
    with client.chat.completions.create(
        model="hanging",
        messages=[{"role": "user", "content": "count [sim tokens=3]"}],
        stream=True,
        extra_headers={"x-stainless-read-timeout": "0.001"},
    ) as chunks:
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "sim0 sim1 sim2"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="hanging", messages=HANG, extra_headers={"x-aigw-timeout": "soon"}
        )
    assert refused.value.body["param"] == "x-aigw-timeout"  # type: ignore[index]
