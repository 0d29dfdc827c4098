"""Seeing inside the running system: one request's trace across the processes, the Prometheus
metrics each process exports, and the Server-Timing header the client gets.

The trace test runs its own OTLP/HTTP receiver (a plain HTTP server decoding the protobuf
`ExportTraceServiceRequest` the services' exporters send) and a stack whose processes get only the
standard `OTEL_*` variables.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aigw_devstack.procs import free_port
from aigw_devstack.stack import Stack

from .conftest import api_client, eventually, start_stack


class Receiver:
    """An OTLP/HTTP trace receiver: every span exported to it, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    with self.lock:
                        self.spans.append(
                            {
                                "service": attrs.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "events": [e.name for e in span.events],
                            }
                        )

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Stack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # milliseconds: spans reach the receiver quickly
    }
    s = start_stack(Path(tmp_path_factory.mktemp("traced")), with_metering=True, env=env)
    yield s
    s.stop()


def _client(stack: Stack) -> OpenAI:
    assert stack.demo is not None
    return OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=20)


def test_one_request_is_one_connected_trace_across_every_process(traced: Stack, receiver: Receiver) -> None:
    client_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    raw = _client(traced).chat.completions.with_raw_response.create(
        model="demo",
        messages=[{"role": "user", "content": "SECRET PROMPT TEXT"}],
        extra_headers={"traceparent": client_parent},
    )
    assert raw.http_response.status_code == 200
    trace_id = client_parent[3:35]
    wanted = {"aigw-edge", "aigw-router", "aigw-worker", "aigw-metering"}

    def complete() -> bool:
        spans = receiver.of_trace(trace_id)
        linked = [s for s in receiver.spans if any(t == trace_id for t, _ in s["links"])]
        return wanted <= {s["service"] for s in spans} | {s["service"] for s in linked} and bool(linked)

    eventually(complete, within=15, what="spans of every process")
    spans = receiver.of_trace(trace_id)
    by_id = {s["span_id"]: s for s in spans}
    by_name = {s["name"]: s for s in spans}
    # One tree: the edge's span is the child of the client's; every other span's parent is in it.
    root = by_name["chat.completions"]
    assert root["service"] == "aigw-edge" and root["parent"] == client_parent[36:52]
    assert all(s["parent"] in by_id for s in spans if s is not root)
    route, worker, attempt = by_name["route"], by_name["worker"], by_name["upstream.attempt"]
    assert route["service"] == "aigw-router" and route["parent"] == root["span_id"]
    assert worker["service"] == "aigw-worker" and worker["parent"] == route["span_id"]
    assert attempt["parent"] == worker["span_id"] and "first_token" in attempt["events"]
    assert by_name["auth"]["parent"] == root["span_id"] and by_name["relay"]["parent"] == root["span_id"]
    # The attributes say who, what and how much; the prompt never appears.
    assert root["attributes"]["aigw.gateway"] == worker["attributes"]["aigw.gateway"] != ""
    assert root["attributes"]["http.response.status_code"] == 200
    assert worker["attributes"]["aigw.tenant"] == "demo"
    usage = raw.parse().usage
    assert usage is not None and worker["attributes"]["aigw.tokens.output"] == usage.completion_tokens
    assert worker["attributes"]["aigw.cost_usd"] > 0
    assert "SECRET PROMPT TEXT" not in repr(receiver.spans)
    # Metering's insert is its own trace, linked to the request's worker span.
    inserts = [s for s in receiver.spans if s["name"] == "metering.insert"]
    assert any((trace_id, worker["span_id"]) in s["links"] for s in inserts)


def test_a_request_the_client_did_not_sample_makes_no_span_anywhere(
    traced: Stack, receiver: Receiver
) -> None:
    unsampled = "00-1bf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
    sampled = "00-2cf7651916cd43dd8448eb211c80319c-d7ad6b7169203331-01"
    client = _client(traced)
    for parent in (unsampled, sampled):  # the sampled one's spans are exported after the other's would be
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], extra_headers={"traceparent": parent}
        )
    eventually(
        lambda: {"aigw-edge", "aigw-worker"} <= {s["service"] for s in receiver.of_trace(sampled[3:35])},
        within=10,
        what="the sampled request's spans",
    )
    assert receiver.of_trace(unsampled[3:35]) == []


def test_the_upstream_call_carries_the_attempts_traceparent(traced: Stack, receiver: Receiver) -> None:
    with httpx.Client(base_url=traced.sim_url, timeout=5) as sim:
        sim.delete("/sim/requests")
        _client(traced).chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        seen = sim.get("/sim/requests").json()
    headers = {k.lower(): v for k, v in seen[-1]["headers"].items()}
    _, trace_id, span_id, _ = headers["traceparent"].split("-")
    eventually(lambda: bool(receiver.of_trace(trace_id)), within=10, what="the request's spans")
    eventually(
        lambda: any(s["span_id"] == span_id for s in receiver.of_trace(trace_id)),
        within=10,
        what="attempt span",
    )
    assert (
        next(s for s in receiver.of_trace(trace_id) if s["span_id"] == span_id)["name"] == "upstream.attempt"
    )


def test_retries_and_fallbacks_are_spans_and_counted(traced: Stack, receiver: Receiver) -> None:
    assert traced.demo is not None
    with api_client(traced, traced.demo.key) as admin:
        down = admin.post("/upstreams", json={"model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1"})
        assert down.status_code == 201, down.text
        gw = admin.post(
            "/gateways",
            json={"name": "observed", "upstream": down.json()["id"], "fallbacks": ["@sim/sim-model"]},
        )
        assert gw.status_code == 201, gw.text
    down_id, slug = down.json()["id"], gw.json()["slug"]
    client = _client(traced)

    def routable() -> bool:
        try:
            client.chat.completions.create(model=gw.json()["id"], messages=[{"role": "user", "content": "x"}])
        except openai.NotFoundError:
            return False
        return True

    eventually(routable, 5.0, "gateway routable")
    before = scrape(traced.metrics_url("worker-0"))
    parent = "00-3df7651916cd43dd8448eb211c80319c-e7ad6b7169203331-01"
    raw = client.chat.completions.with_raw_response.create(
        model=gw.json()["id"],
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"traceparent": parent},
    )
    assert raw.headers["x-aigw-fallback"] == "@sim/sim-model"
    after = scrape(traced.metrics_url("worker-0"))

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # The own endpoint refuses connections: tried, retried once, then the chain's next answers.
    assert moved("aigw_upstream_attempts_total", upstream=down_id, outcome="connect_error") == 2
    assert moved("aigw_upstream_retries_total", upstream=down_id) == 1
    assert moved("aigw_fallbacks_total", gateway=slug) == 1
    assert moved("aigw_upstream_attempts_total", upstream="@sim/sim-model", outcome="ok") == 1

    def attempts() -> list[dict[str, Any]]:
        return [s for s in receiver.of_trace(parent[3:35]) if s["name"] == "upstream.attempt"]

    eventually(lambda: len(attempts()) == 3, within=10, what="three attempt spans")
    seen = sorted((s["attributes"]["aigw.fallback"], s["attributes"]["aigw.retry"]) for s in attempts())
    assert seen == [(0, 0), (0, 1), (1, 0)]
    assert [s["attributes"]["aigw.upstream"] for s in attempts() if s["attributes"]["aigw.fallback"]] == [
        "@sim/sim-model"
    ]
    assert len({s["parent"] for s in attempts()}) == 1  # all children of the request's worker span


# ---------------------------------------------------------------------------------------- metrics
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by (name, labels)."""
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in response.text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        out[(name, pairs)] = float(value)
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there are none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_every_process_exports_metrics_that_move_with_requests(stack: Stack, client: OpenAI) -> None:
    assert stack.demo is not None
    gateway = stack.demo.gateway_slug
    before = {name: scrape(stack.metrics_url(name)) for name in ("edge", "worker-0")}
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "count me"}])
    answer = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "and me"}], stream=True
    )
    chunks = list(answer)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-gateway", messages=[{"role": "user", "content": "x"}])
    edge, worker = scrape(stack.metrics_url("edge")), scrape(stack.metrics_url("worker-0"))

    def moved(after: dict[Any, float], name: str, **labels: str) -> float:
        key = "edge" if after is edge else "worker-0"
        return value(after, name, **labels) - value(before[key], name, **labels)

    assert moved(edge, "aigw_requests_total", gateway=gateway, status="200", stream="false") == 1
    assert moved(edge, "aigw_requests_total", gateway=gateway, status="200", stream="true") == 1
    assert moved(edge, "aigw_requests_total", gateway="", model="", status="404") == 1
    assert moved(edge, "aigw_request_duration_seconds_count", gateway=gateway) == 2
    assert moved(edge, "aigw_time_to_first_token_seconds_count", gateway=gateway) == 1
    assert value(edge, "aigw_nats_connected") == 1 and value(edge, "aigw_inflight_requests") == 0
    usage = chunks[-1].usage
    assert usage is not None
    assert moved(worker, "aigw_tokens_total", gateway=gateway, kind="output") >= usage.completion_tokens > 0
    assert moved(worker, "aigw_cost_usd_total", gateway=gateway) > 0
    assert moved(worker, "aigw_upstream_attempts_total", outcome="ok") == 2
    assert moved(worker, "aigw_upstream_duration_seconds_count") == 2
    # No request ids, keys or prompt text among the labels.
    labels = {v for (_, ls) in edge for _, v in ls}
    assert stack.demo.key not in labels and not any("count me" in v for v in labels)
    for name in ("router-0", "retrieval"):
        assert value(scrape(stack.metrics_url(name)), "aigw_nats_connected") == 1


def test_metering_exports_its_batches_and_lag(traced: Stack) -> None:
    _client(traced).chat.completions.create(model="demo", messages=[{"role": "user", "content": "bill me"}])
    url = traced.metrics_url("metering")
    eventually(
        lambda: value(scrape(url), "aigw_metering_batch_rows_count") >= 1, within=10, what="a metered batch"
    )
    samples = scrape(url)
    assert value(samples, "aigw_metering_batch_rows_sum") >= 1
    assert value(samples, "aigw_metering_insert_seconds_count") >= 1
    assert (
        "aigw_jetstream_consumer_pending",
        frozenset({("stream", "AIGW_USAGE"), ("consumer", "aigw-metering")}),
    ) in samples


# ---------------------------------------------------------------------------------------- Server-Timing
def _timing(header: str) -> dict[str, float]:
    return {name: float(dur) for name, dur in re.findall(r"(\w+);dur=([\d.]+)", header)}


def test_server_timing_says_where_the_time_went(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "time me"}]
    )
    stages = _timing(raw.headers["server-timing"])
    assert set(stages) == {"edge", "route", "ttft", "relay", "total"}
    assert all(v >= 0 for v in stages.values())
    assert stages["edge"] + stages["route"] + stages["ttft"] + stages["relay"] <= stages["total"]

    with client.chat.completions.with_streaming_response.create(
        model="demo", messages=[{"role": "user", "content": "time me"}], stream=True
    ) as streamed:
        stages = _timing(streamed.headers["server-timing"])
        list(streamed.iter_lines())
    assert set(stages) == {"edge", "route", "ttft", "total"}  # a stream's headers leave before its relay
    assert stages["edge"] + stages["route"] + stages["ttft"] <= stages["total"]

    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="no-such-gateway", messages=[{"role": "user", "content": "x"}])
    timing = refused.value.response.headers["server-timing"]
    assert set(_timing(timing)) == {"edge", "total"}
