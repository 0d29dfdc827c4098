"""Request log payloads: secrets never leave the edge, whatever shape they come in."""

from __future__ import annotations

import json

from aigw_edge.requestlog import PAYLOAD_LIMIT, REDACTED, _error_code, redact


def test_secret_fields_and_secret_looking_text_are_redacted_in_json() -> None:
    body = {
        "model": "support",
        "max_tokens": 50,  # a "token" word that is no secret
        "api_key": "anything-at-all",
        "metadata": {"Authorization": "Bearer abc", "X-Api-Key": "v", "note": "ok"},
        "messages": [
            {
                "role": "user",
                "content": "use sk-proj-ABCDEFGHIJKLMNOPQRSTUV and Bearer eyJhbGciOiJIUzI1NiJ9.x",
            },
            {"role": "user", "content": "password=hunter2; my aigw key aigw_" + "A" * 43},
            {"role": "user", "content": "aws AKIAABCDEFGHIJKLMNOP google AIza" + "b" * 35},
        ],
    }
    out = json.loads(redact(json.dumps(body).encode()))
    assert out["model"] == "support" and out["max_tokens"] == 50
    assert out["api_key"] == REDACTED
    assert out["metadata"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED, "note": "ok"}
    text = json.dumps(out)
    for secret in ("sk-proj-ABC", "eyJhbGci", "hunter2", "aigw_AAAA", "AKIAABCD", "AIzabbbb"):
        assert secret not in text, secret
    assert out["messages"][0]["content"].startswith("use [REDACTED] and [REDACTED]")


def test_non_json_bodies_are_redacted_as_text_and_cut() -> None:
    frames = b'data: {"content": "key sk-ABCDEFGHIJKLMNOPQRSTUVWX"}\n\n'
    assert "sk-ABC" not in redact(frames) and REDACTED in redact(frames)
    long = redact(b"x" * (PAYLOAD_LIMIT * 2))
    assert len(long) < PAYLOAD_LIMIT + 20 and long.endswith("[truncated]")


def test_error_code_of_openai_shaped_bodies() -> None:
    assert (
        _error_code(b'{"error": {"code": "rate_limit_exceeded", "type": "requests"}}')
        == "rate_limit_exceeded"
    )
    assert (
        _error_code(b'{"error": {"code": null, "type": "invalid_request_error"}}') == "invalid_request_error"
    )
    assert _error_code(b"not json") == "" and _error_code(b"[1]") == ""


async def test_the_edge_writes_exactly_what_the_contract_reads() -> None:
    """The edge builds its events as dicts (cheaper than the model) and sends one batch per tenant
    per linger window: every field, nothing else, in the types the model validates."""
    import asyncio
    import time

    from pydantic import TypeAdapter

    from aigw_contracts import subjects
    from aigw_contracts.requestlog import RequestLogEvent
    from aigw_edge.requestlog import LoggedBatch, RequestLog
    from aigw_runtime.usage_publisher import UsagePublisher

    class _NoBus:
        async def start_usage_acks(self, on_ack: object) -> None: ...

        async def send_usage(
            self, token: int, subject: str, payload: bytes, headers: dict[str, str]
        ) -> None: ...

    log = RequestLog("edge-1", linger=0.01)
    publisher = log.publisher = UsagePublisher(_NoBus())  # not started: submitted batches queue
    base = {"key_id": "k", "model": "m", "stream": True, "outcome": "error_502", "fallback": "@b/m"}
    for i, tenant in enumerate(("acme", "acme", "other", "")):
        fields = {**base, "request_id": f"r-{i}", "tenant": tenant, "gateway": "gw:ab12", "ttft_ms": 4.5}
        log.record(
            "POST", "/v1/chat/completions", 200, time.time(), time.perf_counter(), fields, None, None, b""
        )
    assert not publisher._submitted  # gathered for the linger window
    await asyncio.wait_for(publisher._wake.wait(), 5)  # one flush hands every tenant's batch over
    batches = [batch for batch, _traceparent in publisher._submitted]
    assert all(isinstance(b, LoggedBatch) for b in batches)
    by_subject = {b.subject(): b for b in batches}
    assert set(by_subject) == {subjects.requests_subject(t) for t in ("acme", "other", "")}
    assert len({b.msg_id() for b in batches}) == 3 and all(b.stream_name == "AIGW_REQUESTS" for b in batches)
    acme = TypeAdapter(list[RequestLogEvent]).validate_json(
        by_subject[subjects.requests_subject("acme")].model_dump_json()
    )
    assert [e.request_id for e in acme] == ["r-0", "r-1"]
    assert set(by_subject[subjects.requests_subject("acme")].events[0]) == set(RequestLogEvent.model_fields)
    event = acme[0]
    assert (event.status, event.error_code, event.gateway, event.fallback, event.ttft_ms, event.stream) == (
        200,
        "error_502",
        "gw:ab12",
        "@b/m",
        4.5,
        True,
    )
    assert event.started_at.tzinfo is not None and event.edge_id == "edge-1"
