"""The other APIs' costs: a response-cache hit against a miss, and embeddings through the gateway
against the same model called in-process.

Same layout as `bench/gateway.py` (services and nats-server on CPU 0, simulator and load on CPU 1),
each scenario `--runs` times, medians reported.

* cache: non-stream requests to the `demo` gateway (no cache: the full path to the simulator),
  to a gateway with its cache on, asked the same request (every request a hit), and to that
  gateway with `Cache-Control: no-cache` (a miss that also looks up and stores: the cache's own
  cost on a miss). The simulator answers at once, so a hit saves only the gateway's own hops.
* embeddings: `POST /v1/embeddings` with `--batch` texts per request at concurrency 1 and 4, in
  embeddings/s, against `MiniLMEmbedder.embed_sync` on the same texts in this process, pinned to
  CPU 0 after the stack stopped (the CPU retrieval had).
* upstream embeddings: the simulator's `/v1/embeddings` as a catalog embedding upstream
  (`@sim/bench-embed`), through the gateway (edge, router, worker, metering's usage stream) and
  called directly, at concurrency 1 and 16: req/s and p50 of each, and their ratios.

`--only cache|local|upstream` runs one group.
"""

from __future__ import annotations

import os

# One BLAS thread for the in-process model, as retrieval runs it (`AIGW_BLAS_THREADS`): set before
# numpy loads. (Spinning BLAS threads on a busy 2-core box made one embedding ~10x slower.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.gateway import HOST, _progress, start_pinned_stack
from bench.loadgen import Result, median, run_load

EMBED_MODEL = "all-MiniLM-L6-v2"


def _texts(batch: int) -> list[str]:
    return [
        f"Passage {i}: an AI gateway routes requests to models and meters their usage." for i in range(batch)
    ]


def _measure(
    port: int,
    path: str,
    body: dict[str, Any],
    key: str,
    conc: int,
    duration: float,
    runs: int,
    headers: str = "",
) -> dict[str, float]:
    results: list[Result] = []
    for _ in range(runs):
        results.append(
            asyncio.run(run_load(HOST, port, path, body, key, conc, duration, extra_headers=headers))
        )
    return {
        "rps": median([r.rps for r in results]),
        "p50_ms": median([r.pct(r.latencies, 0.5) * 1000 for r in results]),
        "p99_ms": median([r.pct(r.latencies, 0.99) * 1000 for r in results]),
        "errors": sum(r.errors for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="texts per embeddings request")
    parser.add_argument(
        "--embed-duration",
        type=float,
        default=8.0,
        help="seconds per embeddings run (a request takes ~100s of ms)",
    )
    parser.add_argument("--only", choices=("cache", "local", "upstream"), help="run one group of scenarios")
    args = parser.parse_args()
    run = {args.only} if args.only else {"cache", "local", "upstream"}

    stack = start_pinned_stack(metering=False)
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    try:
        assert stack.demo is not None and stack.edge_port is not None
        key, port = stack.demo.key, stack.edge_port
        with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}) as admin:
            made = admin.post(
                "/gateways",
                json={"name": "bench-cached", "upstream": "@sim/sim-model", "cache": {"ttl": 3600}},
            )
            made.raise_for_status()
        if "upstream" in run:
            _upstream_embeddings(stack, report, args)
        chat = "/v1/chat/completions"
        prompt = [{"role": "user", "content": "Benchmark prompt of a typical size. [sim tokens=16]"}]
        for conc in (1, 16) if "cache" in run else ():
            _progress(f"cache scenarios, c={conc}")
            report[f"cache/uncached-gateway/c{conc}"] = _measure(
                port, chat, {"model": "demo", "messages": prompt}, key, conc, args.duration, args.runs
            )
            report[f"cache/hit/c{conc}"] = _measure(
                port, chat, {"model": "bench-cached", "messages": prompt}, key, conc, args.duration, args.runs
            )
            report[f"cache/miss-no-cache/c{conc}"] = _measure(
                port,
                chat,
                {"model": "bench-cached", "messages": prompt},
                key,
                conc,
                args.duration,
                args.runs,
                headers="Cache-Control: no-cache\r\n",
            )
        body = {"model": EMBED_MODEL, "input": _texts(args.batch), "encoding_format": "base64"}
        for conc in (1, 4) if "local" in run else ():
            _progress(f"embeddings through the gateway, c={conc}")
            found = _measure(port, "/v1/embeddings", body, key, conc, args.embed_duration, args.runs)
            found["embeddings_per_s"] = found["rps"] * args.batch
            report[f"embeddings/gateway/c{conc}"] = found
    finally:
        stack.stop()

    if "local" in run:
        _in_process(report, args)
    summary = _summary(report)
    report["summary"] = summary
    out = Path(__file__).parent / "results" / f"apis-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"full report: {out}", file=sys.stderr)


def _upstream_embeddings(stack: Any, report: dict[str, Any], args: argparse.Namespace) -> None:
    assert stack.demo is not None and stack.edge_port is not None
    upstream = {
        "kind": "catalog",
        "id": "@sim/bench-embed",
        "provider": "sim",
        "model": "sim-embedding",
        "base_url": f"{stack.sim_url}/v1",
        "prices": {"input": "2E-8"},
        "modalities": {"output": ["embedding"]},
    }
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.demo.operator_key}"}
    ) as op:
        op.post("/upstreams", json=upstream).raise_for_status()
    body = {"model": upstream["id"], "input": _texts(args.batch), "encoding_format": "base64"}
    direct = {**body, "model": "sim-embedding"}
    key = stack.demo.key
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        deadline = time.monotonic() + 10
        while client.post("/embeddings", json=body).status_code != 200:  # the router saw the upstream
            if time.monotonic() > deadline:
                raise RuntimeError("the embedding upstream never became routable")
            time.sleep(0.05)
    for conc in (1, 16):
        _progress(f"upstream embeddings, c={conc}")
        report[f"upstream-embeddings/gateway/c{conc}"] = _measure(
            stack.edge_port, "/v1/embeddings", body, key, conc, args.duration, args.runs
        )
        report[f"upstream-embeddings/direct/c{conc}"] = _measure(
            stack.sim_port, "/v1/embeddings", direct, key, conc, args.duration, args.runs
        )


def _in_process(report: dict[str, Any], args: argparse.Namespace) -> None:
    from aigw_retrieval.embed import MiniLMEmbedder

    os.sched_setaffinity(0, {0})
    embedder = MiniLMEmbedder()
    texts = _texts(args.batch)
    embedder.embed_sync(texts)  # load the weights
    rates = []
    for _ in range(args.runs):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.embed_duration:
            embedder.embed_sync(texts)
            done += len(texts)
        rates.append(done / (time.perf_counter() - started))
    report["embeddings/in-process"] = {"embeddings_per_s": median(rates)}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: str, b: str, field: str) -> float:
        return round(float(report[a][field]) / float(report[b][field]), 3)

    summary: dict[str, Any] = {}
    if "cache/hit/c1" in report:
        summary |= {
            "hit p50 ms (c=1)": report["cache/hit/c1"]["p50_ms"],
            "uncached p50 ms (c=1)": report["cache/uncached-gateway/c1"]["p50_ms"],
            "hit / uncached req/s (c=16)": ratio("cache/hit/c16", "cache/uncached-gateway/c16", "rps"),
            "no-cache miss / uncached p50 (c=1)": ratio(
                "cache/miss-no-cache/c1", "cache/uncached-gateway/c1", "p50_ms"
            ),
            "no-cache miss / uncached req/s (c=16)": ratio(
                "cache/miss-no-cache/c16", "cache/uncached-gateway/c16", "rps"
            ),
        }
    if "embeddings/in-process" in report:
        summary |= {
            "embeddings/s gateway c=1": report["embeddings/gateway/c1"]["embeddings_per_s"],
            "embeddings/s gateway c=4": report["embeddings/gateway/c4"]["embeddings_per_s"],
            "embeddings/s in-process": report["embeddings/in-process"]["embeddings_per_s"],
            "gateway c=4 / in-process": ratio(
                "embeddings/gateway/c4", "embeddings/in-process", "embeddings_per_s"
            ),
        }
    if "upstream-embeddings/gateway/c1" in report:
        for conc in (1, 16):
            gw, direct = f"upstream-embeddings/gateway/c{conc}", f"upstream-embeddings/direct/c{conc}"
            summary[f"upstream embeddings gateway p50 ms (c={conc})"] = report[gw]["p50_ms"]
            summary[f"upstream embeddings direct p50 ms (c={conc})"] = report[direct]["p50_ms"]
            summary[f"upstream embeddings gateway / direct req/s (c={conc})"] = ratio(gw, direct, "rps")
    summary["errors"] = sum(
        v.get("errors", 0) for v in report.values() if isinstance(v, dict) and "errors" in v
    )
    return summary


if __name__ == "__main__":
    main()
