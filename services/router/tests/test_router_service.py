"""The router service against a real nats-server: envelopes in, forwarded envelopes or error events out."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from aigw_contracts import ChatCompletionRequest, ChatEnvelope, ConfigSnapshot, Gateway, headers, subjects
from aigw_contracts.knowledge import GatewayKnowledge
from aigw_contracts.messages import ModelsQuery
from aigw_devstack import NatsServer
from aigw_router.app import create_app
from aigw_router.registry import Registry
from aigw_router.settings import RouterSettings

GID = "01990000-0000-7000-8000-0000000050c3"
REPLY = subjects.reply_subject("edge1", "req1")


class Seen:
    """What the router sent where: worker pool, retrieval, the edge's reply subject."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc
        self.by: dict[str, list[Msg]] = {"worker": [], "reply": [], "retrieval": []}

    def __getitem__(self, name: str) -> list[Msg]:
        return self.by[name]

    def collector(self, name: str) -> Callable[[Msg], Awaitable[None]]:
        async def collect(msg: Msg) -> None:
            self.by[name].append(msg)

        return collect

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self.nc.publish(subject, data, headers=headers)

    async def settle(self, want: int = 1, within: float = 5.0) -> None:
        """Wait until `want` messages arrived in all, then a little longer for strays."""
        deadline = time.monotonic() + within
        while sum(len(v) for v in self.by.values()) < want:
            assert time.monotonic() < deadline, f"expected {want} messages, saw {self.by}"
            await asyncio.sleep(0.01)
        await self.nc.flush()
        await asyncio.sleep(0.05)


def _registry() -> Registry:
    return Registry.from_snapshot(
        ConfigSnapshot(
            gateways=[
                Gateway(
                    id=GID,
                    name="support",
                    tenant="t1",
                    upstream="@openai/gpt-5-mini",
                    instructions="You are support.",
                    parameters={"temperature": 0.2},
                ),
                Gateway(
                    id="01990000-0000-7000-8000-00000000beef",
                    name="grounded",
                    tenant="t1",
                    upstream="@openai/gpt-5-mini",
                    knowledge=GatewayKnowledge(collection="docs"),
                ),
            ]
        )
    )


@pytest.fixture
async def seen(nats_server: NatsServer) -> AsyncIterator[Seen]:
    service = create_app(RouterSettings(nats_url=nats_server.url, router_id="r1"), _registry())
    await service.start()
    nc = await nats.connect(nats_server.url)
    s = Seen(nc)
    for name, subject in (
        ("worker", subjects.WORKER_CHAT),
        ("retrieval", subjects.RETRIEVAL_CHAT),
        ("reply", REPLY),
    ):
        await nc.subscribe(subject, cb=s.collector(name))
    await nc.flush()
    try:
        yield s
    finally:
        await nc.close()
        await service.stop(grace=1)


def _envelope(model: str, **kw: Any) -> bytes:
    env = ChatEnvelope(
        request_id="req1",
        tenant="t1",
        key_id="k1",
        reply=REPLY,
        deadline=time.time() + 30,
        request=ChatCompletionRequest(model=model, messages=[{"role": "user", "content": "hello"}], **kw),
    )
    return env.model_dump_json().encode()


async def test_routed_envelope_reaches_workers_with_a_bounce_reply(seen: Seen) -> None:
    env = ChatEnvelope.model_validate_json(_envelope("support:50c3", temperature=0.9))
    env.trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    await seen.publish(subjects.ROUTER_CHAT, env.model_dump_json().encode())
    await seen.settle()
    assert len(seen["worker"]) == 1 and not seen["reply"]
    msg = seen["worker"][0]
    assert msg.reply == subjects.bounce_subject("r1", REPLY)
    routed = ChatEnvelope.routed(msg.data)
    assert routed.trace == env.trace and msg.headers is None  # untraced: no NATS headers to pay for
    assert routed.route is not None
    assert routed.route.gateway_id == GID and routed.route.response_model == "@openai/gpt-5-mini"
    assert routed.route.body["messages"][0] == {"role": "system", "content": "You are support."}
    assert routed.route.params_used == {"temperature": 0.9}
    assert routed.route.upstream.api_key is None  # catalog credentials never travel on the bus


@pytest.mark.usefixtures("tracing_on")
async def test_a_traced_envelope_carries_its_trace_context_as_nats_headers_too(seen: Seen) -> None:
    env = ChatEnvelope.model_validate_json(_envelope("support:50c3"))
    env.trace = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "v=1",
    }
    await seen.publish(subjects.ROUTER_CHAT, env.model_dump_json().encode())
    await seen.settle()
    (msg,) = seen["worker"]
    routed = ChatEnvelope.routed(msg.data)
    # the router's `route` span is the next hop's parent, in the envelope and in the headers alike
    assert routed.trace["traceparent"] != env.trace["traceparent"]
    assert routed.trace["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert msg.headers == routed.trace


async def test_the_conversation_travels_once_past_the_router(seen: Seen) -> None:
    """The forwarded envelope carries the messages only in the upstream body; the client's own
    messages can still be read back from it (retrieval does)."""
    marker = "a-long-unique-prompt-" + "x" * 2000
    env = ChatEnvelope.model_validate_json(_envelope("support"))
    env.request.messages[0].content = marker
    await seen.publish(subjects.ROUTER_CHAT, env.model_dump_json().encode())
    await seen.settle()
    (msg,) = seen["worker"]
    assert msg.data.count(marker.encode()) == 1
    routed = ChatEnvelope.routed(msg.data)
    assert routed.request.messages == []
    (client,) = routed.client_messages()
    assert client.role == "user" and client.content == marker


async def test_an_envelope_too_large_to_forward_ends_with_a_413_at_once(seen: Seen) -> None:
    """The edge checks its own envelope; the router's is larger (instructions): a publish that the
    bus refuses is an immediate 413 error event, never a request left waiting for its deadline."""
    max_payload = seen.nc.max_payload
    env = ChatEnvelope.model_validate_json(_envelope("support"))
    fixed = len(env.model_dump_json(exclude_none=True))
    env.request.messages[0].content = "y" * (max_payload - fixed - 10)
    data = env.model_dump_json(exclude_none=True).encode()
    assert len(data) <= max_payload  # the edge would have let it through
    await seen.publish(subjects.ROUTER_CHAT, data)
    await seen.settle()
    assert not seen["worker"]
    (err,) = seen["reply"]
    assert err.headers and err.headers[headers.EVENT] == "error" and err.headers[headers.STATUS] == "413"
    assert "message bus limit" in json.loads(err.data)["error"]["message"]


async def test_unknown_gateway_answers_an_error_event_to_the_edge(seen: Seen) -> None:
    await seen.publish(subjects.ROUTER_CHAT, _envelope("nope"))
    await seen.settle()
    assert not seen["worker"]
    (err,) = seen["reply"]
    assert err.headers and err.headers[headers.EVENT] == "error" and err.headers[headers.STATUS] == "404"
    assert json.loads(err.data)["error"]["param"] == "model"


async def test_expired_deadline_is_refused_with_504(seen: Seen) -> None:
    env = ChatEnvelope.model_validate_json(_envelope("support"))
    env.deadline = time.time() - 1
    await seen.publish(subjects.ROUTER_CHAT, env.model_dump_json().encode())
    await seen.settle()
    assert seen["reply"][0].headers and seen["reply"][0].headers[headers.STATUS] == "504"


async def test_no_responders_bounce_becomes_a_503_for_the_edge(seen: Seen) -> None:
    no_responders = {headers.NATS_STATUS: headers.NO_RESPONDERS}
    await seen.publish(subjects.bounce_subject("r1", REPLY), b"", no_responders)
    await seen.settle()
    (err,) = seen["reply"]
    assert err.headers and err.headers[headers.STATUS] == "503"
    assert "worker" in json.loads(err.data)["error"]["message"]


async def test_models_lists_the_tenants_gateways(seen: Seen) -> None:
    reply = await seen.nc.request(
        subjects.ROUTER_MODELS, ModelsQuery(tenant="t1").model_dump_json().encode(), timeout=5
    )
    listed = {m["id"]: m for m in json.loads(reply.data)["data"]}
    assert {GID, "support:50c3", "@openai/gpt-5-mini"} <= set(listed)
    # OpenAI's fields as they are, then the catalog's metadata (a gateway: its upstream's)
    mini = {
        "provider": "openai",
        "context_window": 400000,
        "input_modalities": ["text", "image"],
        "output_modalities": ["text"],
    }
    for mid, owner in ((GID, "t1"), ("@openai/gpt-5-mini", "openai")):
        entry = listed[mid]
        assert list(entry)[:4] == ["id", "object", "created", "owned_by"]
        assert entry["object"] == "model" and entry["owned_by"] == owner
        assert {k: entry[k] for k in mini} == mini
        assert "max_completion_tokens" in entry["supported_parameters"]
    # a public key is not told which provider serves its gateway, and gets no catalog models
    reply = await seen.nc.request(
        subjects.ROUTER_MODELS,
        ModelsQuery(tenant="t1", key_kind="public").model_dump_json().encode(),
        timeout=5,
    )
    (public, *_) = [m for m in json.loads(reply.data)["data"] if m["id"] == GID]
    assert "provider" not in public and public["context_window"] == 400000


async def test_a_malformed_models_query_gets_an_error_reply(seen: Seen) -> None:
    reply = await seen.nc.request(subjects.ROUTER_MODELS, b"{not json", timeout=5)
    assert reply.headers and reply.headers[headers.STATUS] == "500"


async def test_gateways_with_knowledge_go_through_retrieval_first(seen: Seen) -> None:
    await seen.publish(subjects.ROUTER_CHAT, _envelope("grounded"))
    await seen.publish(subjects.ROUTER_CHAT, _envelope("support"))
    await seen.settle(2)
    (grounded,) = seen["retrieval"]
    assert grounded.reply == subjects.bounce_subject("r1-k", REPLY)
    routed = ChatEnvelope.routed(grounded.data)
    assert routed.route is not None and routed.route.knowledge == GatewayKnowledge(collection="docs")
    assert routed.client_messages()[0].content == "hello"
    assert len(seen["worker"]) == 1  # the gateway without knowledge skips retrieval entirely


async def test_missing_retrieval_service_is_a_503_naming_it(seen: Seen) -> None:
    no_responders = {headers.NATS_STATUS: headers.NO_RESPONDERS}
    await seen.publish(subjects.bounce_subject("r1-k", REPLY), b"", no_responders)
    await seen.settle()
    (err,) = seen["reply"]
    assert err.headers and err.headers[headers.STATUS] == "503"
    assert "retrieval" in json.loads(err.data)["error"]["message"]


async def test_an_envelope_it_refuses_is_answered_on_its_reply_subject(seen: Seen) -> None:
    """An edge of another version may accept a request this router's contracts refuse: the client
    gets the 400 at once instead of waiting for its holder timeout."""
    env = json.loads(_envelope("support"))
    env["request"]["messages"] = [{"role": "tool", "content": "no call id"}]
    await seen.publish(subjects.ROUTER_CHAT, json.dumps(env).encode())
    await seen.settle()
    assert not seen["worker"]
    (err,) = seen["reply"]
    assert err.headers and err.headers[headers.STATUS] == "400"
    assert "tool_call_id" in json.loads(err.data)["error"]["param"]
