"""CPU per request of the observability code itself, measured in one process (thread CPU time, so
other jobs on a loaded machine barely move it): the metrics every request updates (always on), and
the spans of one request across edge, router and worker with tracing off, on at 100 % and on at
1 % (the SDK's BatchSpanProcessor exporting to a dropping exporter: batching and queueing included,
serialization and the HTTP post not).

    uv run python -m bench.telemetry_cost [--requests 20000] [--runs 5]

The spans are made by the same calls the services make (`aigw_runtime.telemetry`), in the order
one request makes them; `bench.tracing` measures the whole system.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, get_current_span, set_span_in_context

from aigw_edge import observe as edge_metrics
from aigw_runtime import telemetry
from aigw_worker import observe as worker_metrics
from bench.loadgen import median


class Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def metrics_of_one_request() -> None:
    """What `ChatEndpoint._measured` and the worker's attempt accounting update per request."""
    edge_metrics.REQUESTS("demo:50c3", "@sim/model", "200", "false").inc()
    edge_metrics.DURATION("demo:50c3", "false").observe(0.01)
    worker_metrics.ATTEMPTS("@sim/model", "ok").inc()
    worker_metrics.DURATION("@sim/model").observe(0.01)


def spans_of_one_request() -> None:
    """The spans one non-stream request makes: edge, router, worker, attempt."""
    tracing = telemetry.tracing
    if not tracing.on:  # what every service checks first
        return
    tracer = tracing.tracer
    root = tracer.start_span("chat.completions", telemetry.extract({}), kind=SpanKind.SERVER)
    if root.is_recording():
        with tracer.start_as_current_span("auth", context=set_span_in_context(root)):
            pass
    trace: dict[str, str] = {}
    telemetry.inject(root, trace)
    with telemetry.request_span("route", trace, **{"aigw.tenant": "demo"}):
        pass
    if telemetry.traced(trace):
        with telemetry.request_span("worker", trace, **{"aigw.tenant": "demo"}) as worker:
            if get_current_span().is_recording():
                with tracer.start_as_current_span("upstream.attempt", kind=SpanKind.CLIENT):
                    upstream: dict[str, str] = {}
                    telemetry.inject(get_current_span(), upstream)
                    get_current_span().add_event("first_token")
            assert worker is not None
            worker.set_attributes({"aigw.tokens.output": 16, "aigw.cost_usd": 0.0001})
    root.set_attributes({"http.response.status_code": 200, "aigw.gateway": "demo:50c3"})
    if root.is_recording():
        tracer.start_span("relay", set_span_in_context(root)).end()
    root.end()


def per_call_us(fn: Callable[[], None], n: int) -> float:
    for _ in range(min(n, 1000)):
        fn()
    began = time.thread_time_ns()
    for _ in range(n):
        fn()
    return (time.thread_time_ns() - began) / n / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    out: dict[str, float] = {}
    out["metrics (always on)"] = median(
        [per_call_us(metrics_of_one_request, args.requests) for _ in range(args.runs)]
    )
    out["spans, tracing off"] = median(
        [per_call_us(spans_of_one_request, args.requests) for _ in range(args.runs)]
    )
    for name, sampler in (("100 %", ALWAYS_ON), ("1 %", TraceIdRatioBased(0.01))):
        provider = TracerProvider(sampler=ParentBased(sampler))
        provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 16))
        telemetry.tracing.tracer, telemetry.tracing.on = provider.get_tracer("aigw"), True
        telemetry.tracing.follow_parent = True
        out[f"spans, tracing on {name}"] = median(
            [per_call_us(spans_of_one_request, args.requests) for _ in range(args.runs)]
        )
        telemetry.tracing.on = False
        provider.shutdown()
    print(json.dumps({k: round(v, 2) for k, v in out.items()}, indent=2))


if __name__ == "__main__":
    main()
