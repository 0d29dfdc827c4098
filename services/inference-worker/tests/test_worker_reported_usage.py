"""An upstream's usage report is not trusted blindly: impossible token counts (negative, fractional,
astronomically large) are held within bounds, the client is shown exactly what is billed, and the
usage event stays one the usage store accepts. The upstream is a real HTTP server on loopback that
reports `prompt_tokens: -50` and `completion_tokens: 1e20`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest

from aigw_contracts import UsageEvent, skus
from aigw_contracts.ids import uuid7
from aigw_devstack.procs import free_port
from aigw_worker.pricing import MAX_REPORTED_TOKENS, checked_usage

from .conftest import SIM_PRICES, make_envelope, running, worker_settings

BOGUS = {
    "prompt_tokens": -50,
    "completion_tokens": 1e20,
    "total_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 999},
    "completion_tokens_details": {"reasoning_tokens": -3},
}
BILLED = {"prompt_tokens": 0, "completion_tokens": MAX_REPORTED_TOKENS, "total_tokens": MAX_REPORTED_TOKENS}


def _whole() -> bytes:
    return json.dumps(
        {
            "id": "up",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": BOGUS,
        }
    ).encode()


def _stream() -> bytes:
    def chunk(choices: list[Any], usage: Any = None) -> bytes:
        body = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    return b"".join(
        (
            chunk([{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]),
            chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            chunk([], BOGUS),
            b"data: [DONE]\n\n",
        )
    )


@asynccontextmanager
async def lying_upstream() -> AsyncIterator[str]:
    """An OpenAI-compatible upstream whose answers report impossible usage."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            request = json.loads(await reader.readexactly(length))
            body, kind = (
                (_stream(), b"text/event-stream")
                if request.get("stream")
                else (_whole(), b"application/json")
            )
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                % (kind, len(body), body)
            )
            await writer.drain()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


def _lines(lines: list[dict[str, Any]]) -> dict[str, tuple[int, Decimal, Decimal]]:
    return {
        line["sku"]: (line["quantity"], Decimal(str(line["unit_price"])), Decimal(str(line["amount"])))
        for line in lines
    }


@pytest.mark.parametrize("kind", ["catalog", "own"])
async def test_impossible_usage_is_billed_within_bounds_and_shown_as_billed(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = worker_settings(upstream_allowlist=["127.0.0.1/32"])
    async with lying_upstream() as url, running(settings) as h:
        for stream in (False, True):
            env = make_envelope(url, f"{uuid7()} count", stream=stream, include_usage=stream, kind=kind)
            with caplog.at_level(logging.WARNING, logger="aigw.worker.accounting"):
                events = await h.run(env)
                (usage_msg,) = await h.usage_for(env.request_id)
            assert events[-1].kind == "final", events[-1].body
            last = json.loads(events[-1].body.split(b"\n")[-1])
            shown = last["usage"]
            assert {k: shown[k] for k in BILLED} == BILLED
            assert shown["prompt_tokens_details"]["cached_tokens"] == 0  # within [0, prompt_tokens]
            assert shown["completion_tokens_details"] == {"reasoning_tokens": 0}

            event = UsageEvent.model_validate_json(usage_msg.body)  # the contract's schema
            billed = _lines([line.model_dump() for line in event.lines])
            assert billed == _lines(last["generation_context"]["generated_usage"])  # client == bill
            assert billed[skus.CHAT_IN][0] == 0 and billed[skus.CHAT_OUT][0] == MAX_REPORTED_TOKENS
            assert skus.CHAT_IN_CACHED not in billed
            for quantity, price, amount in billed.values():  # what the usage store checks
                assert 0 <= quantity < 2**63 and amount == price * quantity
            if kind == "catalog":
                assert billed[skus.CHAT_OUT][2] == SIM_PRICES.output * MAX_REPORTED_TOKENS
            assert not any(line.description.endswith("(estimated)") for line in event.lines)

            (warning,) = [r for r in caplog.records if getattr(r, "request_id", None) == env.request_id]
            assert warning.levelno == logging.WARNING
            assert any("prompt_tokens -50 -> 0" in fix for fix in warning.corrections)  # type: ignore[attr-defined]
            caplog.clear()


@pytest.mark.parametrize(
    ("raw", "expected", "corrected"),
    [
        ({"prompt_tokens": 5, "completion_tokens": 2}, (5, 2, 7, 0), False),
        (
            {"prompt_tokens": -50, "completion_tokens": 1e20},
            (0, MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS, 0),
            True,
        ),
        ({"prompt_tokens": 12.7, "completion_tokens": "3"}, (12, 3, 15, 0), True),
        ({"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 99}, (10, 1, 11, 0), False),
        (
            {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}},
            (10, 1, 11, 10),
            True,
        ),
        (
            {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": -1}},
            (10, 1, 11, 0),
            True,
        ),
        ({"prompt_tokens": None, "completion_tokens": 4}, (0, 4, 4, 0), False),
    ],
)
def test_reported_counts_are_held_within_bounds(
    raw: dict[str, Any], expected: tuple[int, ...], corrected: bool
) -> None:
    usage, fixed = checked_usage(raw)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens) == expected
    assert bool(fixed) is corrected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"prompt_tokens": "x"},
        {"prompt_tokens": float("nan")},
        {"completion_tokens": float("inf")},
        {"prompt_tokens": True},
    ],
)
def test_counts_that_are_no_number_make_the_usage_unusable(raw: Any) -> None:
    assert checked_usage(raw) == (None, [])
