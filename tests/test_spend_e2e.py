"""Spend control end to end: two edge replicas, two workers, metering into chDB, the openai SDK.

A burst of 200 concurrent requests against a budget that affords about 20 never spends more than
the budget, refuses the rest with 402 `insufficient_quota`, and what was settled equals what
ClickHouse holds; a worker killed mid-request frees its hold once the hold expires; credits and
budgets are managed through the API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from aigw_devstack.stack import Stack

from .conftest import api_client, eventually, start_stack

HOLD_GRACE = 1.0  # seconds a hold outlives its request's deadline (AIGW_REQUEST_TIMEOUT: 4 s)
PROMPT = "hi there [sim tokens=50]"  # 50 words out; 4 + 4 prompt tokens (the simulator's count)
MAX_TOKENS = 50
# What one request costs at the simulator's prices (2.5e-7 in, 2e-6 out): 8 × in + 50 × out.
COST = 8 * Decimal("2.5E-7") + 50 * Decimal("0.000002")


@pytest.fixture(scope="module")
def spend_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(
        tmp_path_factory.mktemp("spend"),
        with_metering=True,
        workers=2,
        edges=2,
        env={"AIGW_SPEND_HOLD_GRACE": str(HOLD_GRACE)},
    )
    yield s
    s.stop()


def _tenant_with_key(stack: Stack, tenant: str) -> tuple[httpx.Client, str, str]:
    """A new tenant (as the operator), and a private key of it: (operator client, key id, secret)."""
    assert stack.demo is not None
    operator = api_client(stack, stack.demo.operator_key)
    assert operator.post("/tenants", json={"id": tenant}).status_code == 201
    made = operator.post("/keys", json={"name": "spender", "tenant": tenant, "admin": True})
    assert made.status_code == 201, made.text
    return operator, made.json()["id"], made.json()["secret"]


def _account(client: httpx.Client, path: str) -> dict[str, object]:
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


async def _burst(stack: Stack, secret: str, count: int) -> list[object]:
    clients = [
        AsyncOpenAI(base_url=url, api_key=secret, max_retries=0, timeout=30) for url in stack.base_urls()
    ]

    async def one(i: int) -> object:
        try:
            return await clients[i % len(clients)].chat.completions.create(
                model="@sim/sim-model", messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS
            )
        except openai.APIStatusError as err:
            return err

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        for c in clients:
            await c.close()


def test_a_burst_of_200_never_spends_more_than_the_budget(spend_stack: Stack) -> None:
    operator, _, secret = _tenant_with_key(spend_stack, "burst")
    budget = COST * 20
    # A day budget on the tenant affording ~20 answers.
    set_ = operator.put("/spend/budgets/tenant/burst", json={"day": str(budget)})
    assert set_.status_code == 200, set_.text

    results = asyncio.run(_burst(spend_stack, secret, 200))

    answered = [r for r in results if not isinstance(r, openai.APIStatusError)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert {(r.status_code, r.code) for r in refused} <= {(402, "insufficient_quota")}, {
        (r.status_code, r.code, r.message) for r in refused
    }
    assert refused and refused[0].response.headers.get("x-should-retry") == "false"
    assert len(answered) + len(refused) == 200
    assert 1 <= len(answered) <= 20
    billed = sum(
        (
            Decimal(str(line["amount"]))
            for r in answered
            for line in r.model_extra["generation_context"]["generated_usage"]
        ),  # type: ignore[union-attr,index]
        Decimal(0),
    )
    # Settled: every hold released, the spend exactly the answers' lines, never above the budget.
    with api_client(spend_stack, secret) as tenant_api:
        eventually(
            lambda: Decimal(_account(tenant_api, "/spend/budgets/tenant/burst")["reserved"]) == 0,  # type: ignore[arg-type]
            within=10,
            what="every hold settled",
        )
        account = _account(tenant_api, "/spend/budgets/tenant/burst")
        spent = Decimal(account["spent_total"])  # type: ignore[arg-type]
        assert spent == billed
        assert spent <= budget
        print(f"\nburst: budget {budget} spent {spent} answered {len(answered)} refused {len(refused)}")

        def stored() -> Decimal | None:
            report = tenant_api.get("/usage", params={"group_by": "sku"})
            if report.status_code != 200:
                return None
            return Decimal(str(report.json()["totals"]["amount"]))

        eventually(lambda: stored() == spent, within=15, what="ClickHouse total equal to the settled total")
        report = tenant_api.get("/usage", params={"group_by": "sku"}).json()
        assert Decimal(str(report["spend"]["spent_total"])) == spent  # the usage API shows the counters
    operator.close()


def test_a_prepaid_balance_is_credited_audited_and_refuses_once_spent(spend_stack: Stack) -> None:
    operator, _, secret = _tenant_with_key(spend_stack, "prepaid")
    client = openai.OpenAI(base_url=spend_stack.base_url, api_key=secret, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": PROMPT}]
    try:
        # Not prepaid yet: nothing limits it.
        client.chat.completions.create(model="@sim/sim-model", messages=messages, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
        with api_client(spend_stack, secret) as own:
            refused = own.post("/spend/balance/credit", json={"amount": "1"})
            assert refused.status_code == 403  # an admin key may not credit its own tenant
        credited = operator.post(
            "/spend/balance/credit",
            params={"tenant": "prepaid"},
            json={"amount": str(COST * 2), "note": "trial"},
        )
        assert credited.status_code == 200, credited.text
        view = credited.json()
        assert view["prepaid"] is True and Decimal(view["balance"]) == COST * 2
        assert view["credits"][0]["note"] == "trial" and view["credits"][0]["by_key"] == "operator-key"
        answered = 0
        for _ in range(4):
            try:
                client.chat.completions.create(
                    model="@sim/sim-model", messages=messages, max_tokens=MAX_TOKENS
                )  # type: ignore[arg-type]
                answered += 1
            except openai.APIStatusError as err:
                assert err.status_code == 402 and err.code == "insufficient_quota"
                assert "balance" in err.message
        assert answered == 1  # the hold (input bounded by the body's bytes) leaves too little for a second
        eventually(
            lambda: Decimal(_account(operator, "/spend/balance?tenant=prepaid")["reserved"]) == 0,  # type: ignore[arg-type]
            within=5,
            what="settlement",
        )
        assert Decimal(_account(operator, "/spend/balance?tenant=prepaid")["balance"]) == COST  # type: ignore[arg-type]
    finally:
        client.close()
        operator.close()


def test_budgets_of_keys_are_shown_and_kept_to_their_tenant(spend_stack: Stack) -> None:
    operator, key_id, secret = _tenant_with_key(spend_stack, "budgets")
    _, other_key, _ = _tenant_with_key(spend_stack, "others")
    with api_client(spend_stack, secret) as own:
        set_ = own.put(f"/spend/budgets/key/{key_id}", json={"day": "0.5", "month": "3"})
        assert set_.status_code == 200, set_.text
        kept = own.put(f"/spend/budgets/key/{key_id}", json={"day": "0.25"})
        periods = {p["period"]: p for p in kept.json()["periods"]}
        assert Decimal(periods["day"]["budget"]) == Decimal("0.25")
        assert Decimal(periods["month"]["budget"]) == Decimal("3")  # left out: kept
        assert own.get(f"/spend/budgets/key/{other_key}").status_code == 404  # another tenant's key
        assert own.put("/spend/budgets/key/nope", json={"day": "1"}).status_code == 404
        assert own.put(f"/spend/budgets/key/{key_id}", json={"day": "-1"}).status_code == 400

        # A gateway's budget: a gateway whose day budget is spent refuses; the tenant's others answer.
        gateway = own.post("/gateways", json={"name": "capped", "upstream": "@sim/sim-model"})
        assert gateway.status_code == 201, gateway.text
        gateway_id = gateway.json()["id"]
        assert own.put(f"/spend/budgets/gateway/{gateway_id}", json={"day": "0"}).status_code == 200
        client = openai.OpenAI(base_url=spend_stack.base_url, api_key=secret, max_retries=0, timeout=30)
        messages = [{"role": "user", "content": PROMPT}]

        def refused() -> bool:
            try:
                client.chat.completions.create(model=gateway_id, messages=messages, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
            except openai.APIStatusError as err:
                return err.status_code == 402 and "day budget" in err.message
            return False

        eventually(refused, within=5, what="the gateway's budget enforced")
        client.chat.completions.create(model="@sim/sim-model", messages=messages, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
        client.close()
    operator.close()


def test_the_cli_credits_sets_and_shows(spend_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    from aigw_cli.__main__ import main

    assert spend_stack.demo is not None
    operator, key_id, _ = _tenant_with_key(spend_stack, "clitenant")
    common = ["--gateway-url", spend_stack.base_url, "--key", spend_stack.demo.operator_key]
    main(["balance", "credit", "12.5", "--tenant", "clitenant", "--note", "invoice 7", *common])
    main(["budget", "set", "key", key_id, "--day", "2", "--month", "20", *common])
    main(["--json", "budget", "show", "key", key_id, *common])
    out = capsys.readouterr().out
    assert "invoice 7" in out and "12.5" in out
    shown = json.loads(out[out.index('{\n  "object"', out.index("invoice 7")) :])
    assert shown["scope"] == "key" and Decimal(shown["periods"][0]["budget"]) == 2
    main(["balance", "--tenant", "clitenant", *common])
    assert "available" in capsys.readouterr().out
    operator.close()


def test_plan_rate_limits_hold_across_edge_replicas_and_refusals_use_no_slot(spend_stack: Stack) -> None:
    operator, key_id, secret = _tenant_with_key(spend_stack, "rated")
    assert operator.patch(f"/keys/{key_id}", json={"limits": {"requests_per_minute": 5}}).status_code == 200
    clients = [api_client_at(url, secret) for url in spend_stack.base_urls()]
    messages = [{"role": "user", "content": "hi [sim tokens=1]"}]
    try:
        eventually(  # a refused request shows the limit too (and gives its slot back)
            lambda: all(
                _raw(c, messages, model="nope").headers.get("x-ratelimit-limit-requests") == "5"
                for c in clients
            ),
            within=5,
            what="the key's limit known to both edges",
        )
        for i in range(4):  # refused for another reason: no slot used
            assert _raw(clients[i % 2], messages, model="nope").status_code == 404
        answers = [_raw(clients[i % 2], messages) for i in range(8)]
        ok = [a for a in answers if a.status_code == 200]
        limited = [a for a in answers if a.status_code == 429]
        assert len(ok) == 5 and len(limited) == 3  # 5 per minute across both replicas, not 5 each
        assert ok[0].headers["x-ratelimit-limit-requests"] == "5"
        assert ok[-1].headers["x-ratelimit-remaining-requests"] == "0"
        refused = limited[0]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 12
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")

        # A tenant's tokens per minute: a request larger than a whole minute's is told not to retry.
        patched = operator.patch("/tenants/rated", json={"limits": {"tokens_per_minute": 1000}})
        assert patched.status_code == 200, patched.text
        assert (
            operator.patch(f"/keys/{key_id}", json={"limits": {"requests_per_minute": None}}).status_code
            == 200
        )

        def too_large() -> bool:
            answer = _raw(clients[1], messages, max_tokens=5000)
            return answer.status_code == 429 and answer.headers.get("x-should-retry") == "false"

        eventually(too_large, within=5, what="the tenant's token limit")
        assert _raw(clients[0], messages, max_tokens=100).status_code == 200
    finally:
        for c in clients:
            c.close()
        operator.close()


def api_client_at(url: str, secret: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def _raw(client: httpx.Client, messages: list[dict[str, str]], **extra: object) -> httpx.Response:
    """The HTTP answer as is (errors included, every header)."""
    return client.post("/chat/completions", json={"model": "@sim/sim-model", "messages": messages, **extra})


def test_a_worker_killed_mid_request_frees_its_hold_after_expiry(spend_stack: Stack) -> None:
    operator, _, secret = _tenant_with_key(spend_stack, "killed")
    assert (
        operator.post("/spend/balance/credit", params={"tenant": "killed"}, json={"amount": "5"}).status_code
        == 200
    )
    client = openai.OpenAI(base_url=spend_stack.base_url, api_key=secret, max_retries=0, timeout=30)
    started = time.monotonic()
    errors: list[BaseException] = []

    async def slow() -> None:
        try:
            await AsyncOpenAI(
                base_url=spend_stack.base_url, api_key=secret, max_retries=0, timeout=30
            ).chat.completions.create(
                model="@sim/sim-model",
                messages=[{"role": "user", "content": "wait [sim latency_ms=3000]"}],
                max_tokens=10,
            )
        except openai.APIError as err:
            errors.append(err)

    import threading

    thread = threading.Thread(target=lambda: asyncio.run(slow()))
    thread.start()
    try:
        eventually(
            lambda: Decimal(_account(operator, "/spend/balance?tenant=killed")["reserved"]) > 0,  # type: ignore[arg-type]
            within=5,
            what="the request's hold",
        )
        spend_stack.kill("worker-0")
        spend_stack.kill("worker-1")
        thread.join(timeout=10)
        assert errors and isinstance(errors[0], openai.APIStatusError) and errors[0].status_code == 503
        # Nobody settles a dead worker's request: its hold expires (deadline 4 s + grace 1 s).
        held = Decimal(_account(operator, "/spend/balance?tenant=killed")["reserved"])  # type: ignore[arg-type]
        assert held > 0
        eventually(
            lambda: Decimal(_account(operator, "/spend/balance?tenant=killed")["reserved"]) == 0,  # type: ignore[arg-type]
            within=8,
            what="the hold's expiry",
        )
        assert time.monotonic() - started >= 4.0  # not before the request's deadline had passed
        account = _account(operator, "/spend/balance?tenant=killed")
        assert Decimal(account["balance"]) == Decimal(5)  # type: ignore[arg-type]
        assert Decimal(account["available"]) == Decimal(5)  # type: ignore[arg-type]
    finally:
        thread.join(timeout=10)
        spend_stack.restart("worker-0", wait=False)  # both start at once
        spend_stack.restart("worker-1")
        client.close()
        operator.close()


def test_knowledge_plan_limits_hold_across_edges_and_refusals_use_no_slot(spend_stack: Stack) -> None:
    """Searches per minute, documents per day and collections per tenant, over both edges."""
    operator, _, secret = _tenant_with_key(spend_stack, "knowing")
    edges = [api_client_at(url, secret) for url in spend_stack.base_urls()]
    try:
        kb = edges[0].post("/collections", json={"name": "kb"})
        assert kb.status_code == 201, kb.text
        limits = {"searches_per_minute": 3, "documents_per_day": 4, "collections": 1}
        assert operator.patch("/tenants/knowing", json={"limits": limits}).status_code == 200
        ops = [api_client_at(url, spend_stack.demo.operator_key) for url in spend_stack.base_urls()]  # type: ignore[union-attr]
        eventually(
            lambda: all(op.get("/tenants/knowing").json()["limits"]["collections"] == 1 for op in ops),
            within=5,
            what="the tenant's limits known to both edges",
        )
        for op in ops:
            op.close()

        # Collections per tenant: a count cap, 403 (deleting one makes room), whichever edge.
        capped = edges[1].post("/collections", json={"name": "kb2"})
        assert capped.status_code == 403 and capped.json()["error"]["code"] == "collection_limit_reached"

        # Documents per UTC day: counted per document, across both edges.
        docs = [{"docid": f"d{i}", "text": f"Fact number {i} about refunds."} for i in range(6)]
        added = edges[0].post("/collections/kb/documents", json={"documents": docs[:3]})
        assert added.status_code == 200, added.text
        assert added.headers["x-ratelimit-limit-documents"] == "4"
        assert added.headers["x-ratelimit-remaining-documents"] == "1"
        over = edges[1].post("/collections/kb/documents", json={"documents": docs[3:5]})
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(over.headers["retry-after"]) >= 1 and "per day" in over.json()["error"]["message"]
        assert over.headers["x-ratelimit-remaining-documents"] == "1"
        too_many = edges[1].post("/collections/kb/documents", json={"documents": docs})
        assert too_many.status_code == 429 and too_many.headers["x-should-retry"] == "false"
        assert edges[1].post("/collections/kb/documents", json=docs[3]).status_code == 200  # the last one

        # Searches per minute: a search retrieval refuses (400) gives its slot back.
        for i in range(2):
            refused = edges[i].post("/collections/kb/search", json={"query": "refunds", "reranker": "model"})
            assert refused.status_code == 400, refused.text
        answers = [edges[i % 2].post("/collections/kb/search", json={"query": "refunds"}) for i in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[2].headers["x-ratelimit-remaining-searches"] == "0"
        assert answers[3].headers["x-ratelimit-limit-searches"] == "3"
        assert 1 <= int(answers[3].headers["retry-after"]) <= 21

        # A gateway grounded on the collection searches before it answers: refused too, at once.
        gateway = edges[0].post(
            "/gateways",
            json={"name": "grounded", "upstream": "@sim/sim-model", "knowledge": {"collection": "kb"}},
        )
        assert gateway.status_code == 201, gateway.text
        messages = [{"role": "user", "content": "refunds? [sim tokens=1]"}]

        def grounded_refused() -> bool:
            answer = _raw(edges[1], messages, model=gateway.json()["id"])
            return answer.status_code == 429 and "searches" in answer.json()["error"]["message"]

        eventually(grounded_refused, within=5, what="the grounded gateway's search counted")
        assert _raw(edges[1], messages).status_code == 200  # no knowledge: no search to count
    finally:
        for c in edges:
            c.close()
        operator.close()


def test_direct_searches_and_ingestion_count_against_budgets(spend_stack: Stack) -> None:
    """What retrieval bills on its own (a direct search, a document's embeddings) is counted
    like ClickHouse counts it, and a spent budget refuses them (402)."""
    operator, _, secret = _tenant_with_key(spend_stack, "searcher")
    with api_client(spend_stack, secret) as own:
        assert own.put("/spend/budgets/tenant/searcher", json={"day": "5"}).status_code == 200
        assert own.post("/collections", json={"name": "facts"}).status_code == 201
        added = own.post(
            "/collections/facts/documents", json={"docid": "d", "text": "Refunds take five days."}
        )
        assert added.status_code == 200, added.text
        assert own.post("/collections/facts/search", json={"query": "refunds"}).status_code == 200

        def counters() -> Decimal:
            return Decimal(_account(own, "/spend/budgets/tenant/searcher")["spent_total"])  # type: ignore[arg-type]

        def stored() -> Decimal | None:
            report = own.get("/usage", params={"group_by": "sku"})
            return Decimal(str(report.json()["totals"]["amount"])) if report.status_code == 200 else None

        eventually(
            lambda: stored() is not None and stored() > 0 and stored() == counters(),
            within=15,
            what="the counters equal to ClickHouse",
        )
        assert own.put("/spend/budgets/tenant/searcher", json={"day": "0"}).status_code == 200

        def refused() -> bool:
            answer = own.post("/collections/facts/search", json={"query": "refunds"})
            return answer.status_code == 402 and answer.json()["error"]["code"] == "insufficient_quota"

        eventually(refused, within=5, what="a spent budget refusing searches")
    operator.close()
