"""Traces for every aigw process: the OpenTelemetry SDK with an OTLP/HTTP exporter, or nothing.

Configured only by OpenTelemetry's standard variables, read by the SDK itself:
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and/or `OTEL_TRACES_EXPORTER`
(`otlp`, `console` or `none`) turn tracing on; `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
(default `parentbased_always_on`), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`
and `OTEL_EXPORTER_OTLP_HEADERS` work as documented by OpenTelemetry. `OTEL_SDK_DISABLED=true`
turns it off whatever else is set.

OTLP over HTTP/protobuf rather than gRPC: every collector (and Jaeger, Tempo, Honeycomb…) takes
both, and the HTTP exporter needs only `requests` and `protobuf`, where gRPC pulls in `grpcio`,
a large native extension, into every service image.

Unconfigured, `setup` installs no SDK and returns False; callers read `tracing.on` once and skip
their span code entirely (not even no-op spans are made on the request path). The context of a
request travels in the `traceparent` of its envelope (`ChatEnvelope.trace`, which every hop
parses and forwards anyway), copied into the `traceparent` NATS header of every message carrying an
envelope (`nats_headers`) and of its usage events (to metering),
and in the `traceparent` HTTP header of each upstream call.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("aigw.telemetry")

_PROPAGATOR = TraceContextTextMapPropagator()


class _Tracing:
    """Whether this process traces (`on`, decided once by `setup`), and its tracer."""

    def __init__(self) -> None:
        self.on = False
        # The sampler follows a sampled-out parent (`parentbased_*`, the default): then the hops
        # after the edge make no span at all for a request the edge did not sample (`traced`).
        self.follow_parent = False
        self.tracer: Tracer = trace.NoOpTracer()
        self._provider: Any = None

    def shutdown(self) -> None:
        """Export the spans still queued (at process exit); nothing when tracing is off."""
        if self._provider is not None:
            try:
                self._provider.shutdown()
            except Exception:  # the collector is gone: spans are lost, the process still exits
                log.warning("could not export the last spans", exc_info=True)
            self._provider = None


tracing = _Tracing()


def configured(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup(service: str, instance: str = "") -> bool:
    """Install the SDK for `service` (`aigw-<service>` unless `OTEL_SERVICE_NAME` says otherwise)
    when the environment asks for traces; True when this process traces. Called once, at start."""
    if tracing.on or not configured():
        return tracing.on
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased

    attributes: dict[str, str] = {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or f"aigw-{service}"}
    if instance:
        attributes[SERVICE_INSTANCE_ID] = instance
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_SAMPLER
    exporters = [e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    for name in exporters:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name in ("otlp", ""):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER ignored", extra={"exporter": name})
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracing._provider = provider
    tracing.follow_parent = isinstance(provider.sampler, ParentBased)
    tracing.tracer = provider.get_tracer("aigw")
    tracing.on = True
    log.info("tracing on", extra={"service": attributes[SERVICE_NAME], "exporters": exporters})
    return True


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context whose parent is the `traceparent` in `carrier` (None: start a new trace)."""
    if not carrier:
        return None
    return _PROPAGATOR.extract(carrier)


def inject(span: Span, carrier: MutableMapping[str, str]) -> None:
    """Put `span`'s `traceparent` (and `tracestate`) into `carrier`, for the next hop."""
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))


_TRACE_HEADERS = ("traceparent", "tracestate")


def nats_headers(carrier: Mapping[str, str]) -> dict[str, str] | None:
    """The trace context of an envelope's `trace` as the NATS headers of the message carrying it,
    for a request this hop traces (`traced`); else None. The envelope field stays what the services
    read; the headers let tools that see only NATS messages (a tap, `nats sub --headers`,
    instrumented consumers) join the trace. Only for traced requests: a header costs each message
    about 5–9 µs more to publish and receive (nats-py, `bench/nats_headers.py`), which tracing off
    must not pay."""
    if not traced(carrier):
        return None
    out = {name: value for name in _TRACE_HEADERS if (value := carrier.get(name))}
    return out or None


def link_of(carrier: Mapping[str, str] | None) -> Link | None:
    """A link to the span a `traceparent` names (metering links its inserts to the requests)."""
    if not carrier:
        return None
    ctx = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return Link(ctx) if ctx.is_valid else None


def error_status(err: object) -> Status:
    """A span's error status for `err` (a `GatewayError`'s code and message, or a short text)."""
    code = getattr(err, "code", None)
    message = getattr(err, "message", None)
    return Status(StatusCode.ERROR, f"{code}: {message}" if code else str(message or err))


_NOTHING = contextlib.nullcontext()


def traced(carrier: Mapping[str, str]) -> bool:
    """Whether a hop of the request whose context is in `carrier` makes spans: tracing is on, and
    the request was sampled or the sampler decides afresh at each hop. A `traceparent` whose
    sampled flag is off, under a parent-based sampler, is read from its flags without parsing."""
    if not tracing.on:
        return False
    if tracing.follow_parent:
        parent = carrier.get("traceparent")
        if parent is not None and len(parent) == 55 and not int(parent[53:55], 16) & 1:
            return False
    return True


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one around a block, or (tracing off, or the current request not
    sampled) a shared no-op context."""
    if not tracing.on or not trace.get_current_span().is_recording():
        return _NOTHING
    return tracing.tracer.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def request_span(name: str, trace_carrier: dict[str, str], **attributes: Any) -> Iterator[Span | None]:
    """The span of one hop of a request (tracing off: None): a child of the `traceparent` in
    `trace_carrier` (the envelope's `trace`), current while the block runs, and the parent the
    carrier names afterwards, so the next hop is its child. Exceptions mark it failed. None (no
    span, the carrier untouched) when the request is not traced (`traced`)."""
    if not traced(trace_carrier):
        yield None
        return
    with tracing.tracer.start_as_current_span(name, extract(trace_carrier), attributes=attributes) as current:
        inject(current, trace_carrier)
        yield current
