"""The router service: resolves the gateway a request names, applies its policy, forwards to workers.

One message in, one message out per request. Publishing to the worker pool sets the NATS reply to
a "bounce" subject that embeds the edge's reply subject: if no worker listens, nats-server answers
a 503 status there and the router turns it into an error event for the edge, with no state kept.

Auto-routing gateways are the exception: their requests wait here for the complexity classifier,
each in a task of its own, which a cancel from the edge (`CHAT_CANCEL`: the client went away)
stops, classifier call included (`aigw_runtime.cancels`): such a request never reaches an upstream.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial

from nats.aio.msg import Msg
from opentelemetry.trace import Span
from pydantic import ValidationError

from aigw_contracts import (
    ChatEnvelope,
    ConfigSnapshot,
    Gateway,
    RoutedCall,
    Upstream,
    UpstreamTarget,
    errors,
    headers,
    subjects,
)
from aigw_contracts.api import Model, ModelList
from aigw_contracts.config import AutoRouting
from aigw_contracts.embeddings import EmbedJob, RoutedEmbed
from aigw_contracts.messages import ModelsQuery
from aigw_runtime import telemetry
from aigw_runtime.bus import Outgoing, error_outgoing
from aigw_runtime.cancels import Cancels
from aigw_runtime.configstore import ConfigWatcher
from aigw_runtime.heartbeat import Heartbeats
from aigw_runtime.service import Service
from aigw_runtime.workercall import ask_worker

from .complexity import ComplexityRouter
from .policy import ParameterStep, apply_plan, cap_output_tokens, parameter_plan, upstream_body
from .registry import Registry
from .settings import RouterSettings

log = logging.getLogger("aigw.router")


@dataclass(frozen=True, slots=True)
class Plan:
    """What routing to one gateway version (and upstream, for one key kind) always comes to."""

    upstream: UpstreamTarget
    fallbacks: tuple[UpstreamTarget, ...]
    parameters: tuple[ParameterStep, ...]


class Router:
    """The routing logic, apart from the broker wiring so it is testable on its own.

    What a request's gateway already decides (its parameter policy, its upstream and fallbacks as
    call targets) is worked out once per gateway version and kept (`Plan`); any change of a gateway
    or upstream (`Registry.version`) drops every plan, so the next request sees the change."""

    def __init__(self, settings: RouterSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._plans: dict[tuple[str | None, str, str], Plan] = {}
        self._plans_version = registry.version

    def plan(self, gateway: Gateway | None, upstream: Upstream, key_kind: str) -> Plan:
        if self._plans_version != self.registry.version:
            self._plans = {}
            self._plans_version = self.registry.version
        key = (gateway.id if gateway else None, upstream.id, key_kind)
        plan = self._plans.get(key)
        if plan is None:
            fallbacks = self.registry.fallbacks(gateway) if gateway is not None and gateway.fallbacks else []
            plan = Plan(
                UpstreamTarget.of(upstream),
                tuple(UpstreamTarget.of(u) for u in fallbacks),
                parameter_plan(gateway, key_kind),
            )
            self._plans[key] = plan
        return plan

    def route(self, envelope: ChatEnvelope) -> Gateway | None:
        """Fill `envelope.route`; the gateway it named (None for a catalog model called directly)."""
        if envelope.remaining() <= 0:
            raise errors.DeadlineExceeded("The request's deadline passed before it could be routed")
        request = envelope.request
        gateway, upstream = self.registry.resolve(request.model, envelope.tenant, envelope.key_kind)
        if upstream.embeds:
            raise errors.InvalidRequest(
                f"'{request.model}' is an embedding model: call POST /v1/embeddings", param="model"
            )
        plan = self.plan(gateway, upstream, envelope.key_kind)
        params = apply_plan(request, plan.parameters)
        cap_output_tokens(params, self.settings.max_output_tokens)
        envelope.route = RoutedCall(
            gateway_id=gateway.id if gateway else None,
            gateway_slug=gateway.slug if gateway else None,
            upstream=plan.upstream,
            body=upstream_body(request, gateway, params),
            prefill=gateway.prefill if gateway else None,
            params_used=params,
            response_model=upstream.id,
            knowledge=gateway.knowledge if gateway else None,
            timeouts=gateway.timeouts if gateway else None,
        )
        # `upstream_body` puts the instructions (if any) first, then the client's messages.
        start = 1 if gateway is not None and gateway.instructions else 0
        envelope.route.client_span = (start, start + len(request.messages))
        if plan.fallbacks:
            envelope.route.fallbacks = list(plan.fallbacks)
        return gateway

    def embed(self, job: EmbedJob) -> RoutedEmbed | None:
        """The embedding upstream `job.model` names (a gateway's or a catalog model), or None: a
        name no gateway or catalog model has is the bundled local model's (retrieval's to check)."""
        try:
            gateway, upstream = self.registry.resolve(job.model, job.tenant, job.key_kind)
        except errors.NotFound:
            return None
        if not upstream.embeds:
            raise errors.InvalidRequest(
                f"'{job.model}' is not an embedding model; its upstream '{upstream.id}' answers chat "
                "completions",
                param="model",
            )
        if upstream.api not in (None, "openai"):
            raise errors.InvalidRequest(
                f"The embedding upstream '{upstream.id}' speaks '{upstream.api}'; embeddings are sent "
                "to OpenAI-compatible upstreams only",
                param="model",
            )
        return RoutedEmbed(
            job=job,
            gateway_id=gateway.id if gateway else None,
            gateway_slug=gateway.slug if gateway else None,
            upstream=UpstreamTarget.of(upstream),
            timeouts=gateway.timeouts if gateway else None,
        )

    def models(self, query: ModelsQuery) -> ModelList:
        """What the key may use, with the catalog's metadata; public keys (apps in browsers) are not
        told which provider serves a gateway."""
        now = int(time.time())
        public = query.key_kind == "public"
        return ModelList(
            data=[
                _model(mid, now, owner, upstream, public)
                for mid, owner, upstream in self.registry.models_for(query.tenant, query.key_kind)
            ]
        )


def _model(mid: str, created: int, owner: str, upstream: Upstream | None, public: bool) -> Model:
    model = Model(id=mid, created=created, owned_by=owner)
    if upstream is None:  # a gateway whose upstream is gone: OpenAI's fields only
        return model
    modalities = upstream.modalities or {}
    model.provider = None if public else upstream.provider
    model.context_window = upstream.context_window
    model.input_modalities = modalities.get("input")
    model.output_modalities = modalities.get("output")
    model.supported_parameters = upstream.parameters
    return model


def _reply_of(data: bytes) -> str:
    """The reply subject of an envelope that did not validate, if it names one of an edge."""
    try:
        reply = json.loads(data).get("reply")
    except (ValueError, AttributeError):
        return ""
    if isinstance(reply, str) and reply.startswith(subjects.REPLY_PREFIX + "."):
        return reply
    return ""


def _route_span(envelope: ChatEnvelope) -> Span:
    """The request's "route" span, a child of the edge's; the next hops are its children."""
    span = telemetry.tracing.tracer.start_span(
        "route",
        telemetry.extract(envelope.trace),
        attributes={"aigw.tenant": envelope.tenant, "aigw.request_id": envelope.request_id},
    )
    telemetry.inject(span, envelope.trace)
    return span


def _end_span(span: Span | None, envelope: ChatEnvelope, err: errors.GatewayError | str | None) -> None:
    if span is None:
        return
    route = envelope.route
    if route is not None:
        span.set_attributes(
            {
                "aigw.gateway": route.gateway_slug or "",
                "aigw.upstream": route.upstream.id,
                "aigw.knowledge": route.knowledge is not None,
                **({"aigw.routed_complexity": route.routed_complexity} if route.routed_complexity else {}),
            }
        )
    if err is not None:
        span.set_status(telemetry.error_status(err))
    span.end()


@dataclass(frozen=True)
class Pending:
    """A routed request that waits for its gateway's complexity classification (`complexity.py`)."""

    envelope: ChatEnvelope
    routing: AutoRouting
    tenant: str
    began: float = 0.0  # perf_counter when the router took the request
    span: Span | None = field(default=None, compare=False)


class Handlers:
    """What the router does with each message, as pure functions from bytes to `Outgoing` (or, for
    an auto-routing gateway, to a `Pending` that `finish` completes after the classifier answered)."""

    def __init__(self, router: Router, router_id: str, complexity: ComplexityRouter | None = None) -> None:
        self.router = router
        self.router_id = router_id
        self.complexity = complexity or ComplexityRouter(router.registry, None)
        # Separate bounce subjects per destination, so a bounce says who was missing.
        self.worker_bounce = router_id
        self.retrieval_bounce = f"{router_id}-k"

    def chat(self, data: bytes) -> Outgoing | Pending | None:
        began = time.perf_counter()
        try:
            envelope = ChatEnvelope.model_validate_json(data)
        except ValidationError as exc:
            # An envelope whose reply subject is readable gets its error there (an edge of another
            # version may accept what this router refuses); one without is dropped.
            reply = _reply_of(data)
            log.warning("refused a malformed envelope", extra={"answered": bool(reply)})
            if not reply:
                return None
            return error_outgoing(reply, errors.invalid_message(exc, "request"))
        span = _route_span(envelope) if telemetry.traced(envelope.trace) else None
        try:
            gateway = self.router.route(envelope)
        except errors.GatewayError as err:
            _end_span(span, envelope, err)
            return error_outgoing(envelope.reply, err)
        except Exception:
            log.exception("routing failed", extra={"request_id": envelope.request_id})
            _end_span(span, envelope, "internal error")
            return error_outgoing(
                envelope.reply, errors.InternalError("The gateway could not route this request")
            )
        if gateway is not None and gateway.routing is not None:
            return Pending(envelope, gateway.routing, gateway.tenant, began, span)
        return self._forward(envelope, began, span)

    async def finish(self, pending: Pending) -> Outgoing:
        """A `Pending` request, routed by its level (or by its gateway's upstream if that fails).
        Raises `CancelledError` when the request was cancelled meanwhile: nothing is forwarded."""
        try:
            await self.complexity.route(pending.envelope, pending.routing, pending.tenant)
        except Exception:
            log.exception("auto routing failed", extra={"request_id": pending.envelope.request_id})
        return self._forward(pending.envelope, pending.began, pending.span)

    def _forward(self, routed: ChatEnvelope, began: float, span: Span | None) -> Outgoing:
        routed.stage("route", (time.perf_counter() - began) * 1000)
        _end_span(span, routed, None)
        # Gateways with knowledge go through retrieval first; the others skip it entirely.
        grounded = routed.route is not None and routed.route.knowledge is not None
        return Outgoing(
            subjects.RETRIEVAL_CHAT if grounded else subjects.WORKER_CHAT,
            routed.forward_json(),
            telemetry.nats_headers(routed.trace),
            reply=subjects.bounce_subject(
                self.retrieval_bounce if grounded else self.worker_bounce, routed.reply
            ),
            fail_to=routed.reply,
        )

    def embed(self, data: bytes, reply: str) -> Outgoing:
        """`POST /v1/embeddings`: forwarded with the edge's own reply subject (one hop, the vectors
        never pass here again) to a worker for an embedding upstream, else to retrieval."""
        try:
            job = EmbedJob.model_validate_json(data)
            routed = self.router.embed(job)
        except ValidationError as exc:
            return _error_reply(reply, errors.invalid_message(exc, "embedding job"))
        except errors.GatewayError as err:
            return _error_reply(reply, err)
        if routed is None:
            return Outgoing(subjects.RETRIEVAL_EMBED, data, reply=reply)
        return Outgoing(
            subjects.WORKER_EMBED, routed.model_dump_json(exclude_none=True).encode(), reply=reply
        )

    def bounce(self, subject: str, hdrs: dict[str, str] | None) -> Outgoing | None:
        if (hdrs or {}).get(headers.NATS_STATUS) != headers.NO_RESPONDERS:
            return None
        prefix = f"{subjects.BOUNCE_PREFIX}.{self.retrieval_bounce}."
        if subject.startswith(prefix):
            reply = subjects.reply_from_bounce(self.retrieval_bounce, subject)
            return error_outgoing(
                reply,
                errors.Unavailable("No retrieval service is available; try again shortly", retry_after=1),
            )
        reply = subjects.reply_from_bounce(self.worker_bounce, subject)
        return error_outgoing(
            reply, errors.Unavailable("No inference worker is available; try again shortly", retry_after=1)
        )


def _error_reply(reply: str, err: errors.GatewayError) -> Outgoing:
    payload, hdrs = errors.error_reply(err)
    return Outgoing(reply, payload, hdrs)


def create_app(settings: RouterSettings, registry: Registry | None = None) -> Service:
    """The router service. Without a `registry`, gateways and upstreams come from the config store
    (loaded whole before the first subscription, then watched)."""
    watch_store = registry is None
    registry = registry or Registry.from_snapshot(ConfigSnapshot())
    if settings.catalog_providers is not None:
        registry.catalog_providers = frozenset(settings.catalog_providers)
    router = Router(settings, registry)
    handlers = Handlers(
        router, settings.router_id, ComplexityRouter(registry, None, settings.classifier_timeout)
    )
    service = Service(
        "router",
        settings.router_id,
        settings.nats_url,
        health_host=settings.health_host,
        health_port=settings.health_port,
    )
    bus = service.bus
    heartbeats = Heartbeats(bus, settings.heartbeat_interval)
    cancels = Cancels()  # requests waiting for their classification, by request id
    service.details = lambda: {"classifying": len(cancels), "cancelled": cancels.stopped}
    watcher: ConfigWatcher | None = None

    async def load_config() -> None:
        nonlocal watcher
        handlers.complexity.ask = partial(ask_worker, bus.nc)
        if not watch_store:
            return
        watcher = ConfigWatcher(bus.nc.jetstream())
        view = await watcher.start()
        for upstream in view.upstreams.values():
            registry.put_upstream(upstream)
        for gateway in view.gateways.values():
            registry.add_gateway(gateway)
        watcher.listeners.append(registry.on_config_change)
        bus.on_reconnect.append(watcher.reconnected)  # a NATS restart loses the watch: catch up

    async def finish(pending: Pending) -> None:
        try:
            await bus.send(await handlers.finish(pending))
        finally:
            heartbeats.release(pending.envelope.reply)

    async def on_chat(msg: Msg) -> None:
        out = handlers.chat(msg.data)
        if isinstance(out, Pending):  # a model call first: never hold up the next request
            request_id = out.envelope.request_id
            if cancels.cancelled_before(request_id) is not None:
                return  # its client left already: not even the classifier is asked
            heartbeats.hold(out.envelope.reply)  # while the classifier runs, the edge hears we hold it
            cancels.track(request_id, service.spawn(finish(out), name=f"aigw-route-{request_id}"))
        else:
            await bus.send(out)

    async def on_cancel(msg: Msg) -> None:
        cancels.on_cancel(msg.data)

    async def on_bounce(msg: Msg) -> None:
        await bus.send(handlers.bounce(msg.subject, msg.headers))

    async def on_embed(msg: Msg) -> None:
        if msg.reply:
            await bus.send(handlers.embed(msg.data, msg.reply))

    async def on_models(data: bytes) -> tuple[bytes, None]:
        listing = router.models(ModelsQuery.model_validate_json(data))
        return listing.model_dump_json(exclude_none=True).encode(), None

    async def stop_watching() -> None:
        await heartbeats.close()
        if watcher is not None:
            await watcher.stop()

    service.on_start.append(load_config)
    service.on_stop.append(stop_watching)
    service.route(subjects.ROUTER_CHAT, on_chat, queue=subjects.ROUTER_QUEUE)
    # Every router hears every cancel; one for a request classifying here stops it. They flow until
    # the very end: a request must not go on to an upstream while its cancel cannot reach us.
    service.route(subjects.CHAT_CANCEL, on_cancel, takes_work=False)
    for prefix in (handlers.worker_bounce, handlers.retrieval_bounce):
        # Bounces answer requests this router already forwarded: they flow until the very end.
        service.route(subjects.bounce_wildcard(prefix), on_bounce, takes_work=False)
    service.route(subjects.ROUTER_EMBED, on_embed, queue=subjects.ROUTER_QUEUE)
    service.reply_route(subjects.ROUTER_MODELS, on_models, "model list", queue=subjects.ROUTER_QUEUE)
    return service
