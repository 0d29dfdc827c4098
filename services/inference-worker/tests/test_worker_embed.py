"""Embedding jobs on the worker (`aigw_worker.embed`), against the real simulator's `/v1/embeddings`
over HTTP and a real nats-server: the vectors as raw float32 after the `EmbedResult` line, priced at
the upstream's input price and metered, retried on a 5xx, and refused by open circuits."""

from __future__ import annotations

import json
import struct
import time
from decimal import Decimal
from typing import Any

import httpx

from aigw_contracts import Prices, UpstreamTarget, errors, headers, skus, subjects
from aigw_contracts.embeddings import EmbedJob, EmbedResult, RoutedEmbed
from aigw_contracts.ids import uuid7
from aigw_simulator import embeddings as sim_embeddings

from .conftest import Harness, Sim, running, worker_settings

PRICE = Decimal("2E-8")


def _routed(base_url: str, texts: list[str], max_retries: int | None = None, **job: Any) -> RoutedEmbed:
    target = UpstreamTarget(
        max_retries=max_retries,
        id="@sim/embed",
        kind="catalog",
        provider="sim",
        model="sim-embedding",
        base_url=base_url,
        prices=Prices(input=PRICE),
    )
    return RoutedEmbed(
        job=EmbedJob(
            request_id=uuid7(),
            tenant="t1",
            key_id="k1",
            model="embedder",
            texts=texts,
            deadline=time.time() + 10,
            **job,
        ),
        gateway_id="g1",
        gateway_slug="embedder:0001",
        upstream=target,
    )


async def _ask(h: Harness, routed: RoutedEmbed) -> tuple[EmbedResult, list[list[float]]]:
    """The worker's answer, or the `GatewayError` it carries raised."""
    assert h.nc is not None
    reply = await h.nc.request(subjects.WORKER_EMBED, routed.model_dump_json().encode(), timeout=10)
    status = (reply.headers or {}).get(headers.STATUS)
    if status is not None:
        raise errors.error_of_reply(status, reply.data, "embedding")
    head, _, raw = reply.data.partition(b"\n")
    result = EmbedResult.model_validate_json(head)
    floats = struct.unpack(f"<{result.count * result.dim}f", raw)
    rows = [list(floats[i * result.dim : (i + 1) * result.dim]) for i in range(result.count)]
    return result, rows


async def test_vectors_prices_and_the_usage_event(sim: Sim) -> None:
    async with running(worker_settings(spend_enabled=False)) as h:
        routed = _routed(sim.url, ["hello world", "a b c ."], dimensions=48)
        result, rows = await _ask(h, routed)
        assert (result.model, result.count, result.dim) == ("@sim/embed", 2, 48)
        assert rows == [sim_embeddings.vector("hello world", 48), sim_embeddings.vector("a b c .", 48)]
        tokens = sim_embeddings.tokens("hello world") + sim_embeddings.tokens("a b c .")
        [line] = result.lines
        assert (line.sku, line.quantity, line.unit_price, line.amount) == (
            skus.EMBEDDINGS_IN,
            tokens,
            PRICE,
            PRICE * tokens,
        )
        [event] = await h.usage_for(routed.job.request_id)
        usage = json.loads(event.body)
        assert (usage["gateway_id"], usage["upstream"], usage["source"]) == ("g1", "@sim/embed", "inference")
        assert [(u["sku"], u["quantity"]) for u in usage["lines"]] == [(skus.EMBEDDINGS_IN, tokens)]


async def test_a_5xx_is_retried_and_a_dead_upstream_opens_its_circuit(sim: Sim) -> None:
    settings = worker_settings(
        spend_enabled=False, upstream_retry_backoff=0.01, circuit_failures=2, circuit_cooldown=30
    )
    async with running(settings) as h:
        marker = uuid7()
        text = f"{marker} [sim fault=500 fault_times=1]"
        result, rows = await _ask(h, _routed(sim.url, [text]))
        assert rows == [sim_embeddings.vector(text)]  # the second attempt answered
        assert result.tokens == sim_embeddings.tokens(text)  # billed once
        records = _records(sim, marker)
        assert [r["outcome"] for r in records] == ["500", "completed"]

        dead = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
        for _ in range(2):
            try:
                await _ask(h, _routed(dead, ["x"], max_retries=0))
            except errors.GatewayError as err:
                assert err.status == 502, err.message
            else:
                raise AssertionError("a dead upstream answered")
        try:
            await _ask(h, _routed(dead, ["x"], max_retries=0))
        except errors.Unavailable as err:
            assert "circuit open" in err.message
        else:
            raise AssertionError("an open circuit let a request through")


def _records(sim: Sim, marker: str) -> list[dict[str, Any]]:
    records = httpx.get(f"{sim.root}/sim/requests", timeout=5).json()
    found = [r for r in records if marker in json.dumps(r.get("body"))]
    return sorted(found, key=lambda r: r["received_at"])
