"""The router keeps what a gateway version decides (parameter policy, call targets) between
requests, and any change of a gateway or an upstream is seen by the very next request."""

from __future__ import annotations

import time

from aigw_contracts import ChatCompletionRequest, ChatEnvelope, ConfigSnapshot, Gateway, Upstream
from aigw_contracts.config import ParameterRule
from aigw_router.app import Router
from aigw_router.registry import Registry
from aigw_router.settings import RouterSettings

GID = "01990000-0000-7000-8000-00000000abcd"


def _upstream(uid: str, model: str = "m") -> Upstream:
    return Upstream(id=uid, kind="own", model=model, base_url="http://x/v1", tenant="t1", api_key="sk")


def _gateway(**fields: object) -> Gateway:
    return Gateway.model_validate(
        {"id": GID, "name": "support", "tenant": "t1", "upstream": "own-1", **fields}
    )


def _envelope(key_kind: str = "private", **params: object) -> ChatEnvelope:
    return ChatEnvelope(
        request_id="r1",
        tenant="t1",
        key_id="k1",
        key_kind=key_kind,
        reply="aigw.v1.reply.e.r1",
        deadline=time.time() + 30,
        request=ChatCompletionRequest.model_validate(
            {"model": GID, "messages": [{"role": "user", "content": "hi"}], **params}
        ),
    )


def _route(router: Router, key_kind: str = "private", **params: object) -> ChatEnvelope:
    envelope = _envelope(key_kind, **params)
    router.route(envelope)
    assert envelope.route is not None
    return envelope


def test_a_gateway_version_is_planned_once_and_each_change_is_seen_at_once() -> None:
    registry = Registry.from_snapshot(
        ConfigSnapshot(
            upstreams=[_upstream("own-1"), _upstream("own-2", "m2")],
            gateways=[
                _gateway(
                    parameters={"temperature": 0.2},
                    policy={"temperature": ParameterRule(mode="clamped", min=0.1, max=0.5)},
                    fallbacks=["own-2"],
                )
            ],
        ),
        catalog=[],
    )
    router = Router(RouterSettings(), registry)
    first, second = _route(router, temperature=0.9), _route(router, temperature=0.3)
    assert first.route is not None and second.route is not None
    assert first.route.params_used["temperature"] == 0.5 and second.route.params_used["temperature"] == 0.3
    assert first.route.upstream is second.route.upstream  # planned once for this gateway version
    assert [f.id for f in first.route.fallbacks] == ["own-2"]

    # A new version of the gateway: locked parameter, other upstream, no fallback.
    registry.on_config_change(
        "gateway", GID, None, _gateway(upstream="own-2", parameters={"temperature": 0.7}, version=2)
    )
    changed = _route(router, temperature=0.3).route
    assert changed is not None
    assert changed.params_used["temperature"] == 0.3  # default rule: the request's value
    assert changed.upstream.id == "own-2" and changed.upstream.model == "m2" and changed.fallbacks == []
    locked = _gateway(upstream="own-2", policy={"temperature": ParameterRule(mode="locked")}, version=3)
    registry.on_config_change("gateway", GID, None, locked)
    assert "temperature" not in _route(router, temperature=0.3).route.params_used  # type: ignore[union-attr]

    # An upstream's change reaches the plan of a gateway that did not change.
    registry.on_config_change("upstream", "own-2", None, _upstream("own-2", "m2-renamed"))
    assert _route(router).route.upstream.model == "m2-renamed"  # type: ignore[union-attr]


def test_a_deleted_fallback_leaves_the_plan_and_key_kinds_are_planned_apart() -> None:
    registry = Registry.from_snapshot(
        ConfigSnapshot(
            upstreams=[_upstream("own-1"), _upstream("own-2")],
            gateways=[_gateway(fallbacks=["own-2"])],
        ),
        catalog=[],
    )
    router = Router(RouterSettings(), registry)
    assert [f.id for f in _route(router).route.fallbacks] == ["own-2"]  # type: ignore[union-attr]
    registry.on_config_change("upstream", "own-2", None, None)
    assert _route(router).route.fallbacks == []  # type: ignore[union-attr]
    # `seed` is not a parameter a public key may set: the private key's plan must not leak into it.
    assert _route(router, seed=7).route.params_used.get("seed") == 7  # type: ignore[union-attr]
    assert "seed" not in _route(router, "public", seed=7).route.params_used  # type: ignore[union-attr]
