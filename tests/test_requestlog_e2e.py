"""The request log end to end: every request the edge answered, refusals included, is listed once
by `GET /v1/requests` and `aigw requests`, with tokens and cost from its usage; payloads only for
gateways that opt in, with secrets redacted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_devstack.stack import Stack
from tests.conftest import api_client, eventually, start_stack

SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("requestlog"), with_metering=True)
    yield stack
    stack.stop()


def _listed(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    resp = http.get("/requests", params=params)
    return resp.json()["rows"] if resp.status_code == 200 else []  # 503 while metering opens its store


def _accepted(client: OpenAI, model: str) -> bool:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError:  # not on this edge yet
        return False
    return True


def test_every_request_lands_once_with_status_tokens_cost_and_redacted_payloads(logged: Stack) -> None:
    assert logged.demo is not None
    http = api_client(logged, logged.demo.key)
    operator = api_client(logged, logged.demo.operator_key)
    client = OpenAI(base_url=logged.base_url, api_key=logged.demo.key, max_retries=0, timeout=20)
    kept = http.post(
        "/gateways", json={"name": "kept", "upstream": "@sim/sim-model", "log_payloads": True}
    ).json()
    plain = http.post("/gateways", json={"name": "plain", "upstream": "@sim/sim-model"}).json()
    assert kept["log_payloads"] is True and plain.get("log_payloads") is None
    eventually(lambda: kept["id"] in {m.id for m in client.models.list()}, 2.0, "gateway visible")

    raw = client.chat.completions.with_raw_response.create(
        model=kept["slug"], messages=[{"role": "user", "content": f"my key is {SECRET}, keep it"}]
    )
    answered_id = raw.headers["x-request-id"]
    completion = raw.parse()
    chunks = list(
        client.chat.completions.create(
            model=plain["slug"],
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed_id = chunks[0].id.removeprefix("chatcmpl-")
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-gateway", messages=[{"role": "user", "content": "x"}])
    missing_id = missing.value.response.headers["x-request-id"]
    intruder = OpenAI(base_url=logged.base_url, api_key="aigw_" + "x" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        intruder.chat.completions.create(model=kept["slug"], messages=[{"role": "user", "content": "x"}])
    # 413 before the body is read, 429 from a key's rate limit.
    too_big = http.post("/chat/completions", content=b"x" * (1024 * 1024 + 1))
    assert too_big.status_code == 413
    limited = http.post("/keys", json={"name": "slow", "limits": {"requests_per_minute": 1}}).json()
    slow = OpenAI(base_url=logged.base_url, api_key=limited["secret"], max_retries=0, timeout=20)
    eventually(lambda: _accepted(slow, plain["slug"]), 2.0, "the new key accepted")
    with pytest.raises(openai.RateLimitError) as limited_err:
        slow.chat.completions.create(model=plain["slug"], messages=[{"role": "user", "content": "again"}])
    limited_id = limited_err.value.response.headers["x-request-id"]

    mine = {answered_id, streamed_id, missing_id, limited_id}

    def logged_with_usage() -> bool:
        # The request log and the usage lines are stored by two consumers: both, eventually.
        rows = {r["request_id"]: r for r in _listed(http)}
        return mine <= set(rows) and all(rows[i]["output_tokens"] > 0 for i in (answered_id, streamed_id))

    eventually(logged_with_usage, 30.0, "requests logged with their usage")
    rows = {r["request_id"]: r for r in _listed(http)}

    answered = rows[answered_id]
    assert (answered["status"], answered["error_code"], answered["gateway"]) == (200, "", kept["slug"])
    usage = completion.usage
    assert usage is not None
    assert answered["input_tokens"] == usage.prompt_tokens
    assert answered["output_tokens"] == usage.completion_tokens
    assert float(answered["cost"]) > 0 and answered["latency_ms"] > 0 and not answered["stream"]
    # Kept for this gateway, and without the secret the prompt carried.
    assert "keep it" in answered["request_payload"] and SECRET not in answered["request_payload"]
    assert "[REDACTED]" in answered["request_payload"]
    assert completion.choices[0].message.content[:20] in answered["response_payload"]

    streamed = rows[streamed_id]
    assert (streamed["status"], streamed["stream"], streamed["gateway"]) == (200, True, plain["slug"])
    assert streamed["ttft_ms"] is not None and 0 < streamed["ttft_ms"] <= streamed["latency_ms"]
    assert streamed["request_payload"] is None  # this gateway did not opt in
    assert streamed["output_tokens"] == chunks[-1].usage.completion_tokens  # type: ignore[union-attr]

    refused = rows[missing_id]
    assert (refused["status"], refused["error_code"], refused["input_tokens"]) == (404, "model_not_found", 0)

    assert (rows[limited_id]["status"], rows[limited_id]["error_code"]) == (429, "rate_limit_exceeded")
    assert rows[limited_id]["key_id"] == limited["id"]
    # Refused before its key was read (the body limit comes first): no tenant, like the 401.
    eventually(
        lambda: any(
            r["status"] == 413 and r["error_code"] == "request_too_large" and r["tenant"] == ""
            for r in _listed(operator, tenant="all", status="413")
        ),
        10.0,
        "the 413 logged",
    )

    # The 401 has no tenant: only an operator listing every tenant sees it.
    assert not any(r["status"] == 401 for r in rows.values())
    eventually(
        lambda: any(
            r["status"] == 401 and r["tenant"] == "" for r in _listed(operator, tenant="all", status="401")
        ),
        10.0,
        "the refusal logged",
    )
    assert http.get("/requests", params={"tenant": "all"}).status_code == 403

    # Filters, and each request exactly once.
    assert {r["request_id"] for r in _listed(http, status="4xx")} >= {missing_id}
    assert [r["request_id"] for r in _listed(http, gateway="kept")] == [answered_id]
    listed = [r["request_id"] for r in _listed(http, limit=1000)]
    assert len(listed) == len(set(listed))

    # The CLI lists the same.
    env = {**os.environ, "AIGW_GATEWAY_URL": logged.base_url, "AIGW_API_KEY": logged.demo.key}
    aigw = str(Path(sys.executable).parent / "aigw")
    out = subprocess.run(
        [aigw, "--json", "requests", "--gateway", kept["slug"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert [r["request_id"] for r in json.loads(out.stdout)["rows"]] == [answered_id]
    table = subprocess.run(
        [aigw, "requests", "--status", "404"], capture_output=True, text=True, env=env, timeout=30
    )
    assert missing_id in table.stdout and "model_not_found" in table.stdout
