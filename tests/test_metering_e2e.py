"""Billing exactness end to end: the lines a client sees are the rows ClickHouse (chDB) holds."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from tests.conftest import eventually, start_stack


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("metered"), with_metering=True)
    yield stack
    stack.stop()


def _exact(lines: list[dict[str, Any]]) -> dict[str, tuple[int, Decimal]]:
    """SKU -> (quantity, amount), amounts read back from JSON as exact decimals."""
    out: dict[str, tuple[int, Decimal]] = {}
    for line in lines:
        amount = (
            Decimal(repr(line["amount"])) if isinstance(line["amount"], float) else Decimal(line["amount"])
        )
        assert amount == Decimal(repr(line["unit_price"])) * line["quantity"]
        out[line["sku"]] = (line["quantity"], amount)
    return out


def _stored(http: httpx.Client, gateway: str) -> tuple[dict[str, tuple[int, Decimal]], dict[str, Any]]:
    resp = http.get("/usage", params={"gateway": gateway, "group_by": "sku"})
    if resp.status_code != 200:  # e.g. 503 while metering opens its store: not there yet
        return {}, {}
    report = resp.json()
    rows = {r["sku"]: (r["quantity"], Decimal(str(r["amount"]))) for r in report["rows"]}
    return rows, report


def test_response_stream_and_clickhouse_lines_are_identical(metered: Stack) -> None:
    assert metered.demo is not None
    http = httpx.Client(
        base_url=metered.base_url, headers={"Authorization": f"Bearer {metered.demo.key}"}, timeout=20
    )
    client = OpenAI(base_url=metered.base_url, api_key=metered.demo.key, max_retries=0)
    gw_json = http.post("/gateways", json={"name": "bill-json", "upstream": "@sim/sim-model"}).json()["id"]
    gw_stream = http.post("/gateways", json={"name": "bill-stream", "upstream": "@sim/sim-model"}).json()[
        "id"
    ]
    eventually(lambda: {gw_json, gw_stream} <= {m.id for m in client.models.list()}, 1.0, "gateways visible")

    reply = client.chat.completions.create(
        model=gw_json,
        messages=[{"role": "user", "content": "bill me exactly [sim tokens=7 cached_tokens=3]"}],
        metadata={"order": "42"},
    )
    sent = _exact(reply.model_extra["generation_context"]["generated_usage"])  # type: ignore[index]
    chunks = list(
        client.chat.completions.create(
            model=gw_stream, messages=[{"role": "user", "content": "stream bill [sim tokens=9]"}], stream=True
        )
    )
    streamed = _exact(chunks[-1].model_extra["generation_context"]["generated_usage"])  # type: ignore[index]

    eventually(lambda: _stored(http, gw_json)[0] == sent, 15.0, "non-stream lines in ClickHouse")
    eventually(lambda: _stored(http, gw_stream)[0] == streamed, 15.0, "stream lines in ClickHouse")
    _, report = _stored(http, gw_json)
    assert Decimal(str(report["totals"]["amount"])) == sum(a for _, a in sent.values())
    assert report["totals"]["requests"] == 1


def test_usage_cli_prints_the_same_totals(metered: Stack) -> None:
    assert metered.demo is not None
    out = subprocess.run(
        [str(Path(sys.executable).parent / "aigw"), "usage", "--group-by", "sku"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"AIGW_GATEWAY_URL": metered.base_url, "AIGW_API_KEY": metered.demo.key, "PATH": ""},
    ).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["sku", "quantity", "amount", "requests"]
    assert any(line.startswith("inference.chat_completions.in") for line in lines)
    assert lines[-1].startswith("total")


def test_usage_is_per_tenant_and_operators_may_ask_for_any(metered: Stack) -> None:
    assert metered.demo is not None
    base = metered.base_url
    tenant_key = {"Authorization": f"Bearer {metered.demo.key}"}
    operator_key = {"Authorization": f"Bearer {metered.demo.operator_key}"}
    foreign = httpx.get(f"{base}/usage", params={"tenant": "operator"}, headers=tenant_key, timeout=20)
    assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "tenant"

    def report(params: dict[str, str]) -> dict[str, Any]:
        resp = httpx.get(f"{base}/usage", params=params, headers=operator_key, timeout=20)
        return resp.json() if resp.status_code == 200 else {}

    eventually(lambda: bool(report({"tenant": "demo", "group_by": "tenant"}).get("rows")), 15.0, "demo usage")
    everyone = report({"tenant": "all", "group_by": "tenant"})
    assert everyone["tenant"] is None and "demo" in {row["tenant"] for row in everyone["rows"]}
    bad = httpx.get(f"{base}/usage", params={"bucket": "fortnight"}, headers=tenant_key, timeout=20)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket"


def test_knowledge_rewrite_and_tool_lines_are_stored_as_the_response_lists_them(metered: Stack) -> None:
    """Lines from four producers (retrieval, the rewrite and rerank resolver calls, the worker's tool
    loop) for one request each: every one reaches ClickHouse once, exactly as the response listed it."""
    assert metered.demo is not None
    http = httpx.Client(
        base_url=metered.base_url, headers={"Authorization": f"Bearer {metered.demo.key}"}, timeout=20
    )
    client = OpenAI(base_url=metered.base_url, api_key=metered.demo.key, max_retries=0)
    kb = http.post("/collections", json={"name": "billing-kb"}).json()["id"]
    for docid, text in (
        ("faq", "# FAQ\n\nInvoices are sent on the first day of each month."),
        ("terms", "# Terms\n\nPayment is due thirty days after the invoice date."),
    ):
        added = http.post(f"/collections/{kb}/documents", json={"docid": docid, "text": text})
        assert added.status_code == 200, added.text
    cases = {
        "kb-plain": ({}, "When are invoices sent? [sim tokens=5]"),
        "kb-rewrite": (
            {"strategy": "FullRewrite", "resolver": "@sim/sim-model"},
            "When are invoices sent? [sim tokens=5]",
        ),
        "kb-tool": ({"strategy": "QueryFunction"}, "When are invoices sent? [sim call=knowledge_search]"),
        "kb-rerank": ({"reranker": "model", "minScore": 0}, "When are invoices sent? [sim reply=2,1]"),
    }
    sent: dict[str, dict[str, tuple[int, Decimal]]] = {}
    for name, (knowledge, question) in cases.items():
        gw = http.post(
            "/gateways",
            json={"name": name, "upstream": "@sim/sim-model", "knowledge": {"collection": kb, **knowledge}},
        )
        assert gw.status_code == 201, gw.text
        gw_id = gw.json()["id"]
        eventually(lambda g=gw_id: g in {m.id for m in client.models.list()}, 5.0, f"{name} visible")
        reply = client.chat.completions.create(model=gw_id, messages=[{"role": "user", "content": question}])
        sent[gw_id] = _exact(reply.model_extra["generation_context"]["generated_usage"])  # type: ignore[index]
    expected_skus = {
        "kb-plain": {skus.KNOWLEDGE_SEARCH, skus.CHAT_OUT},
        "kb-rewrite": {skus.REWRITE_IN, skus.KNOWLEDGE_SEARCH, skus.CHAT_OUT},
        "kb-tool": {skus.KNOWLEDGE_SEARCH, skus.CHAT_OUT},
        "kb-rerank": {skus.KNOWLEDGE_SEARCH, skus.RERANK_IN, skus.RERANK_OUT, skus.CHAT_OUT},
    }
    for (gw_id, lines), name in zip(sent.items(), cases, strict=True):
        assert expected_skus[name] <= set(lines), (name, lines)
        eventually(lambda g=gw_id, want=lines: _stored(http, g)[0] == want, 15.0, f"{name} lines stored")


def test_routing_lines_are_stored_as_the_response_lists_them(metered: Stack) -> None:
    assert metered.demo is not None
    http = httpx.Client(
        base_url=metered.base_url, headers={"Authorization": f"Bearer {metered.demo.key}"}, timeout=20
    )
    client = OpenAI(base_url=metered.base_url, api_key=metered.demo.key, max_retries=0)
    sim = "@sim/sim-model"
    routing = {"classifier": sim, "low": sim, "medium": sim, "high": sim}
    gw = http.post("/gateways", json={"name": "auto-billed", "upstream": sim, "routing": routing}).json()[
        "id"
    ]
    eventually(lambda: gw in {m.id for m in client.models.list()}, 5.0, "gateway visible")
    reply = client.chat.completions.create(
        model=gw, messages=[{"role": "user", "content": "a hard one [sim reply=high]"}]
    )
    sent = _exact(reply.model_extra["generation_context"]["generated_usage"])  # type: ignore[index]
    assert {skus.ROUTING_IN, skus.ROUTING_OUT, skus.CHAT_IN, skus.CHAT_OUT} <= set(sent)
    eventually(lambda: _stored(http, gw)[0] == sent, 15.0, "routing and answer lines stored")


def test_a_requests_own_lines_are_listed_within_seconds(metered: Stack) -> None:
    assert metered.demo is not None
    http = httpx.Client(
        base_url=metered.base_url, headers={"Authorization": f"Bearer {metered.demo.key}"}, timeout=20
    )
    client = OpenAI(base_url=metered.base_url, api_key=metered.demo.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "itemize me [sim tokens=4]"}]
    )
    reply = raw.parse()
    sent = _exact(reply.model_extra["generation_context"]["generated_usage"])  # type: ignore[index]

    def lines_of(ref: str) -> dict[str, tuple[int, Decimal]]:
        resp = http.get("/usage", params={"request": ref, "group_by": "sku"})
        rows = resp.json().get("rows", []) if resp.status_code == 200 else []
        return {r["sku"]: (r["quantity"], Decimal(str(r["amount"]))) for r in rows}

    eventually(lambda: lines_of(reply.id) == sent, 10.0, "the request's lines listed")
    assert lines_of(raw.headers["x-request-id"]) == sent  # the header's id names the same request
    listed = http.get("/usage", params={"group_by": "request", "limit": "5"}).json()
    assert listed["rows"][0]["request"] == raw.headers["x-request-id"]  # newest first
