"""Auto routing's pure parts: reading the classifier's answer, what it sees, and the fallback to the
gateway's own upstream when no classifier can be asked (the model call itself is e2e-tested)."""

from __future__ import annotations

import time

from aigw_contracts import ChatCompletionRequest, ChatEnvelope, ConfigSnapshot, Gateway, Upstream
from aigw_contracts.config import AutoRouting
from aigw_router.app import Handlers, Pending, Router
from aigw_router.complexity import MAX_CHARS, ComplexityRouter, parse_complexity, request_text
from aigw_router.registry import Registry
from aigw_router.settings import RouterSettings

GID = "01990000-0000-7000-8000-00000000abcd"
ROUTING = AutoRouting(
    classifier="@openai/gpt-5-nano", low="@openai/gpt-5-nano", medium="own-1", high="@openai/gpt-5"
)


def _envelope(*texts: str) -> ChatEnvelope:
    messages = [{"role": "user", "content": t} for t in texts]
    return ChatEnvelope(
        request_id="r1",
        tenant="t1",
        key_id="k1",
        reply="aigw.v1.reply.e.r1",
        deadline=time.time() + 30,
        request=ChatCompletionRequest.model_validate({"model": GID, "messages": messages}),
    )


def test_the_first_level_named_is_the_answer() -> None:
    assert parse_complexity("High") == "high"
    assert parse_complexity("Complexity: medium, maybe high") == "medium"
    assert parse_complexity("lowish") is None and parse_complexity("") is None


def test_the_classifier_sees_the_latest_user_message_cut_to_its_end() -> None:
    assert request_text(_envelope("first", "second")) == "second"
    long = request_text(_envelope("x" * 5000 + " the end"))
    assert len(long) == MAX_CHARS and long.endswith("the end")


async def test_without_a_classifier_to_ask_the_gateways_own_upstream_answers() -> None:
    own = Upstream(id="own-1", kind="own", model="m", base_url="http://x/v1", tenant="t1", api_key="sk")
    gateway = Gateway(id=GID, name="auto", tenant="t1", upstream="@openai/gpt-5-mini", routing=ROUTING)
    registry = Registry.from_snapshot(ConfigSnapshot(upstreams=[own], gateways=[gateway]))
    handlers = Handlers(Router(RouterSettings(), registry), "rt", ComplexityRouter(registry, None))
    pending = handlers.chat(_envelope("hello").model_dump_json().encode())
    assert isinstance(pending, Pending) and pending.routing == ROUTING
    out = await handlers.finish(pending)
    routed = ChatEnvelope.routed(out.payload)
    assert routed.route is not None and routed.route.upstream.id == "@openai/gpt-5-mini"
    assert routed.route.routed_complexity is None and routed.route.prior_usage == []
