"""Errors a user can hit: OpenAI-shaped, with the status the SDKs expect; never a hang."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_devstack.stack import Stack
from tests.conftest import start_stack


def test_missing_and_wrong_keys_are_401(stack: Stack) -> None:
    for key in ("", "aigw_not-a-real-key-but-long-enough-to-look-like-one"):
        c = OpenAI(base_url=stack.base_url, api_key=key or "x", max_retries=0)
        if not key:
            c = OpenAI(
                base_url=stack.base_url, api_key="x", max_retries=0, default_headers={"Authorization": ""}
            )
        with pytest.raises(openai.AuthenticationError) as err:
            c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 401
        assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_unknown_gateway_is_404_naming_the_param(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope:0000", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["param"] == "model"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (
            b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            "temperature",
        ),
        (b'{"model": "demo"}', "messages"),
        (b'{"model": "demo", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}', "frobnicate"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}', None),
    ],
)
def test_bad_input_is_400_with_an_openai_body(http: httpx.Client, body: bytes, param: str | None) -> None:
    resp = http.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    big = "x" * (2 * 1024 * 1024)
    resp = http.post(
        "/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": big}]}
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"]


def test_upstream_rate_limit_is_429_with_retry_after(client: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "x [sim fault=429]"}]
        )
    assert err.value.response.headers.get("retry-after")


def test_upstream_500_is_a_502_server_error(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "x [sim fault=500]"}]
        )
    assert err.value.status_code == 502


def test_upstream_drop_mid_stream_raises_in_the_sdk(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "x [sim fault=drop drop_after=3 tokens=20]"}],
        stream=True,
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_hanging_upstream_ends_in_504_not_a_hang(client: OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "x [sim fault=hang]"}]
        )
    assert err.value.status_code == 504
    assert time.monotonic() - started < 10


def test_client_disconnect_cancels_the_upstream_call(client: OpenAI, sim: httpx.Client) -> None:
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "slow [sim tokens=200 token_ms=50]"}], stream=True
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.monotonic() + 10
    outcome = None
    while time.monotonic() < deadline:
        requests = sim.get("/sim/requests").json()
        outcome = requests[-1]["outcome"] if requests else None
        if outcome == "client_disconnected":
            break
        time.sleep(0.05)
    assert outcome == "client_disconnected"


def test_no_worker_is_503_and_no_router_is_503(tmp_path_factory: pytest.TempPathFactory) -> None:
    s = start_stack(tmp_path_factory.mktemp("noworker"), workers=0)
    try:
        assert s.demo is not None
        c = OpenAI(base_url=s.base_url, api_key=s.demo.key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 503 and "worker" in err.value.message
        assert err.value.response.headers["retry-after"] == "1"  # SDKs retry 503s; say when
        s.stop_service("router-0")
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 503 and "router" in err.value.message
        assert err.value.response.headers["retry-after"] == "1"
    finally:
        s.stop()


def test_a_gateway_misconfiguration_tells_the_sdk_not_to_retry(
    operator: httpx.Client, admin: httpx.Client, stack: Stack
) -> None:
    """No worker holds credentials for this provider: retrying cannot help, so the 502 says
    `x-should-retry: false` and the SDK (which retries 5xx by default) makes one attempt."""
    made = operator.post(
        "/upstreams",
        json={
            "kind": "catalog",
            "id": "@keyless/m",
            "provider": "keyless",
            "model": "m",
            "base_url": "https://keyless.invalid/v1",
        },
    )
    assert made.status_code == 201, made.text
    gw = admin.post("/gateways", json={"name": "keyless", "upstream": "@keyless/m"}).json()
    attempts: list[httpx.Request] = []
    assert stack.demo is not None
    client = OpenAI(
        base_url=stack.base_url,
        api_key=stack.demo.key,
        max_retries=2,
        http_client=httpx.Client(event_hooks={"request": [attempts.append]}),
    )

    def refused() -> openai.APIStatusError | None:
        attempts.clear()
        try:
            client.chat.completions.create(model=gw["id"], messages=[{"role": "user", "content": "hi"}])
        except openai.NotFoundError:
            return None  # the new gateway is not routable yet
        except openai.APIStatusError as err:
            return err
        raise AssertionError("a keyless upstream answered")

    err = None
    deadline = time.monotonic() + 5
    while err is None and time.monotonic() < deadline:
        err = refused()
    assert err is not None and err.status_code == 502 and err.code == "upstream_not_configured"
    assert err.response.headers["x-should-retry"] == "false" and len(attempts) == 1
    admin.delete(f"/gateways/{gw['id']}")
    operator.delete("/upstreams/@keyless/m")


def test_two_authorization_headers_are_400_not_whichever_comes_first(stack: Stack) -> None:
    assert stack.demo is not None
    good = f"Bearer {stack.demo.key}"
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:
        for method, path in (("POST", "/chat/completions"), ("GET", "/gateways")):
            resp = http.request(
                method,
                path,
                headers=[
                    ("authorization", good),
                    ("authorization", "Bearer aigw_other"),
                    ("content-type", "application/json"),
                ],
                content=b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}'
                if method == "POST"
                else None,
            )
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["code"] == "duplicate_authorization"


def test_a_usage_date_out_of_range_is_400_naming_it(http: httpx.Client) -> None:
    resp = http.get("/usage", params={"from": "0026-01-01"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "from"
