"""The router's handlers through faststream's TestNatsBroker (in memory, no server)."""

import json
import time
from typing import Any

from faststream.nats import TestNatsBroker
from faststream.nats.annotations import NatsMessage

from aigw_contracts import ChatCompletionRequest, ChatEnvelope, ConfigSnapshot, Gateway, headers, subjects
from aigw_contracts.knowledge import GatewayKnowledge
from aigw_contracts.messages import ModelsQuery
from aigw_router.app import create_app
from aigw_router.registry import Registry
from aigw_router.settings import RouterSettings

GID = "01990000-0000-7000-8000-0000000050c3"
REPLY = subjects.reply_subject("edge1", "req1")


def _setup() -> tuple[Any, dict[str, list[NatsMessage]]]:
    registry = Registry.from_snapshot(
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
    _, broker = create_app(RouterSettings(router_id="r1"), registry, hot_path="broker")
    seen: dict[str, list[NatsMessage]] = {"worker": [], "reply": [], "retrieval": []}

    @broker.subscriber(subjects.WORKER_CHAT)
    async def worker(msg: NatsMessage) -> None:
        seen["worker"].append(msg)

    @broker.subscriber(subjects.RETRIEVAL_CHAT)
    async def retrieval(msg: NatsMessage) -> None:
        seen["retrieval"].append(msg)

    @broker.subscriber(REPLY)
    async def edge(msg: NatsMessage) -> None:
        seen["reply"].append(msg)

    return broker, seen


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


async def test_routed_envelope_reaches_workers_with_a_bounce_reply() -> None:
    broker, seen = _setup()
    async with TestNatsBroker(broker) as br:
        await br.publish(_envelope("support:50c3", temperature=0.9), subjects.ROUTER_CHAT)
    assert len(seen["worker"]) == 1 and not seen["reply"]
    msg = seen["worker"][0]
    assert msg.reply_to == subjects.bounce_subject("r1", REPLY)
    routed = ChatEnvelope.model_validate_json(msg.body)
    assert routed.route is not None
    assert routed.route.gateway_id == GID and routed.route.response_model == "@openai/gpt-5-mini"
    assert routed.route.body["messages"][0] == {"role": "system", "content": "You are support."}
    assert routed.route.params_used == {"temperature": 0.9}
    assert routed.route.upstream.api_key is None  # catalog credentials never travel on the bus


async def test_unknown_gateway_answers_an_error_event_to_the_edge() -> None:
    broker, seen = _setup()
    async with TestNatsBroker(broker) as br:
        await br.publish(_envelope("nope"), subjects.ROUTER_CHAT)
    assert not seen["worker"]
    (err,) = seen["reply"]
    assert err.headers[headers.EVENT] == "error" and err.headers[headers.STATUS] == "404"
    assert json.loads(err.body)["error"]["param"] == "model"


async def test_expired_deadline_is_refused_with_504() -> None:
    broker, seen = _setup()
    env = ChatEnvelope.model_validate_json(_envelope("support"))
    env.deadline = time.time() - 1
    async with TestNatsBroker(broker) as br:
        await br.publish(env.model_dump_json().encode(), subjects.ROUTER_CHAT)
    assert seen["reply"][0].headers[headers.STATUS] == "504"


async def test_no_responders_bounce_becomes_a_503_for_the_edge() -> None:
    broker, seen = _setup()
    async with TestNatsBroker(broker) as br:
        await br.publish(
            b"", subjects.bounce_subject("r1", REPLY), headers={headers.NATS_STATUS: headers.NO_RESPONDERS}
        )
    (err,) = seen["reply"]
    assert err.headers[headers.STATUS] == "503"
    assert "worker" in json.loads(err.body)["error"]["message"]


async def test_models_lists_the_tenants_gateways() -> None:
    broker, _ = _setup()
    async with TestNatsBroker(broker) as br:
        reply = await br.request(ModelsQuery(tenant="t1").model_dump_json().encode(), subjects.ROUTER_MODELS)
        ids = {m["id"] for m in json.loads(reply.body)["data"]}
    assert {GID, "support:50c3", "@openai/gpt-5-mini"} <= ids


async def test_gateways_with_knowledge_go_through_retrieval_first() -> None:
    broker, seen = _setup()
    async with TestNatsBroker(broker) as br:
        await br.publish(_envelope("grounded"), subjects.ROUTER_CHAT)
        await br.publish(_envelope("support"), subjects.ROUTER_CHAT)
    (grounded,) = seen["retrieval"]
    assert grounded.reply_to == subjects.bounce_subject("r1-k", REPLY)
    routed = ChatEnvelope.model_validate_json(grounded.body)
    assert routed.route is not None and routed.route.knowledge == GatewayKnowledge(collection="docs")
    assert len(seen["worker"]) == 1  # the gateway without knowledge skips retrieval entirely


async def test_missing_retrieval_service_is_a_503_naming_it() -> None:
    broker, seen = _setup()
    async with TestNatsBroker(broker) as br:
        await br.publish(
            b"", subjects.bounce_subject("r1-k", REPLY), headers={headers.NATS_STATUS: headers.NO_RESPONDERS}
        )
    (err,) = seen["reply"]
    assert err.headers[headers.STATUS] == "503" and "retrieval" in json.loads(err.body)["error"]["message"]
