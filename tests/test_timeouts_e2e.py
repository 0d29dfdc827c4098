"""Upstream timeouts and retries through the real system (aigw issue 10): a gateway whose upstream
hangs answers from its fallback within its time-to-first-token timeout, far inside the request's
deadline, stream and not, and ClickHouse holds exactly the usage the answer listed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_contracts import ConfigSnapshot, Gateway, Timeouts, Upstream
from aigw_contracts.ids import uuid7
from aigw_devstack.stack import SIM_PRICES, SIM_UPSTREAM, Stack
from tests.conftest import eventually, start_stack

TTFT = 1.0  # the gateway's time-to-first-token timeout
DEADLINE = 30.0  # the request's (the edge's AIGW_REQUEST_TIMEOUT): far beyond what the answer takes
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
    flaky = Upstream(
        id=FLAKY, provider="sim", model="flaky", base_url=f"{stack.sim_url}/v1", prices=SIM_PRICES
    )
    stack.add_to_config(ConfigSnapshot(upstreams=[flaky], gateways=[STEADFAST, HANGING]))


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


def _exact(lines: list[dict[str, Any]]) -> dict[str, tuple[int, Decimal]]:
    """SKU -> (quantity, amount), amounts read back from JSON as exact decimals."""
    return {
        line["sku"]: (
            line["quantity"],
            Decimal(repr(line["amount"])) if isinstance(line["amount"], float) else Decimal(line["amount"]),
        )
        for line in lines
    }


def _stored(http: httpx.Client, request_id: str) -> dict[str, tuple[int, Decimal]]:
    resp = http.get("/usage", params={"request": request_id, "group_by": "sku"})
    if resp.status_code != 200:  # e.g. 503 while metering opens its store: not there yet
        return {}
    return {r["sku"]: (r["quantity"], Decimal(str(r["amount"]))) for r in resp.json()["rows"]}


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
    eventually(lambda: _stored(http, request_id) == _exact(lines), 15.0, "the answer's lines in ClickHouse")


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
