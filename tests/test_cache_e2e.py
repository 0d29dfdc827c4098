"""Gateways' response caches through the system: equal requests answered once upstream, hits billed
on their own SKU (by retrieval, into metering), streams replayed as streams."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest
from openai import BadRequestError, OpenAI
from prometheus_client.parser import text_string_to_metric_families

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from tests.conftest import api_client, eventually, start_stack, stored_lines

PRICE = "0.001"


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("cache"), with_metering=True)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def cached(metered: Stack) -> str:
    """A gateway with its response cache on (the demo tenant's), usable once the edge saw it."""
    assert metered.demo is not None
    with api_client(metered, metered.demo.key) as admin:
        made = admin.post(
            "/gateways",
            json={"name": "cached", "upstream": "@sim/sim-model", "cache": {"ttl": 60, "price": PRICE}},
        )
        assert made.status_code == 201, made.text
        assert made.json()["cache"] == {"ttl": 60.0, "price": PRICE}
    return "cached"


@pytest.fixture
def client(metered: Stack) -> OpenAI:
    assert metered.demo is not None
    return OpenAI(base_url=metered.base_url, api_key=metered.demo.key, max_retries=0, timeout=20)


@pytest.fixture
def upstream_calls(metered: Stack) -> Iterator[Any]:
    with httpx.Client(base_url=metered.sim_url, timeout=5) as sim:
        sim.delete("/sim/requests")
        yield lambda: len(sim.get("/sim/requests").json())


def _ask(client: OpenAI, gateway: str, text: str, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=gateway, messages=[{"role": "user", "content": text}], **kw
    )


def test_an_equal_request_is_a_billed_hit_without_an_upstream_call(
    client: OpenAI, cached: str, metered: Stack, upstream_calls: Any
) -> None:
    first = _ask(client, cached, "cache me [sim tokens=7]")
    assert first.headers["x-aigw-cache"] == "miss"
    assert upstream_calls() == 1
    again = _ask(client, cached, "cache me [sim tokens=7]", metadata={"run": "2"}, user="someone-else")
    assert again.headers["x-aigw-cache"] == "hit"
    assert upstream_calls() == 1
    miss, hit = first.parse(), again.parse()
    assert hit.choices[0].message.content == miss.choices[0].message.content
    assert hit.id == f"chatcmpl-{again.headers['x-request-id']}" != miss.id
    context = (hit.model_extra or {})["generation_context"]
    assert context["cache"] == {"hit": True, "request_id": first.headers["x-request-id"]}
    [line] = context["generated_usage"]
    assert line["sku"] == skus.CACHE_HIT and line["quantity"] == 1
    assert Decimal(repr(line["amount"])) == Decimal(PRICE)

    assert metered.demo is not None
    with api_client(metered, metered.demo.key) as http:

        def billed() -> dict[str, Decimal]:
            stored = stored_lines(http, again.headers["x-request-id"])
            return {sku: amount for sku, (_, amount) in stored.items()}

        eventually(lambda: billed() == {skus.CACHE_HIT: Decimal(PRICE)}, 15.0, "the hit's line in metering")


def test_parameters_cache_control_and_other_gateways_miss(
    client: OpenAI, cached: str, upstream_calls: Any
) -> None:
    assert _ask(client, cached, "params [sim tokens=3]").headers["x-aigw-cache"] == "miss"
    assert _ask(client, cached, "params [sim tokens=3]", temperature=0.5).headers["x-aigw-cache"] == "miss"
    assert upstream_calls() == 2
    fresh = _ask(client, cached, "params [sim tokens=3]", extra_headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-aigw-cache"] == "miss" and upstream_calls() == 3
    unkept = _ask(client, cached, "not kept [sim tokens=3]", extra_headers={"Cache-Control": "no-store"})
    assert unkept.headers["x-aigw-cache"] == "miss"
    assert _ask(client, cached, "not kept [sim tokens=3]").headers["x-aigw-cache"] == "miss"
    assert upstream_calls() == 5
    # Fields left out of the entry key are still checked: a bad one is the 400 a miss would get.
    too_many = {f"k{i}": "v" for i in range(17)}
    with pytest.raises(BadRequestError):
        _ask(client, cached, "params [sim tokens=3]", metadata=too_many)
    plain = _ask(client, "demo", "params [sim tokens=3]")  # no cache on this gateway
    assert "x-aigw-cache" not in plain.headers and upstream_calls() == 6


def test_a_stream_is_replayed_as_the_same_stream(client: OpenAI, cached: str, upstream_calls: Any) -> None:
    def stream() -> tuple[str, list[Any], str]:
        raw = client.chat.completions.with_raw_response.create(
            model=cached, messages=[{"role": "user", "content": "stream me [sim tokens=9]"}], stream=True
        )
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw.headers["x-aigw-cache"], chunks, text

    state, first, text = stream()
    assert state == "miss" and len(text.split()) == 9
    state, replayed, again = stream()
    assert state == "hit" and again == text and upstream_calls() == 1
    assert len({c.id for c in replayed}) == 1 and replayed[0].id != first[0].id
    last = replayed[-1]
    assert last.choices[0].finish_reason == "stop" and last.usage is not None
    assert (last.model_extra or {})["generation_context"]["cache"]["hit"] is True


def test_other_apis_share_the_cache(metered: Stack, cached: str, upstream_calls: Any) -> None:
    assert metered.demo is not None
    root = metered.base_url.removesuffix("/v1")
    with anthropic.Anthropic(base_url=root, api_key=metered.demo.key, max_retries=0) as claude:
        body: Any = {
            "model": cached,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi [sim tokens=4]"}],
        }
        first = claude.messages.with_raw_response.create(**body)
        second = claude.messages.with_raw_response.create(**body)
    assert (first.headers["x-aigw-cache"], second.headers["x-aigw-cache"]) == ("miss", "hit")
    assert upstream_calls() == 1
    assert second.parse().content[0].text == first.parse().content[0].text  # type: ignore[union-attr]


def test_hit_ratio_and_savings_per_gateway(client: OpenAI, metered: Stack) -> None:
    assert metered.demo is not None
    with api_client(metered, metered.demo.key) as http:
        made = http.post(
            "/gateways", json={"name": "ratio", "upstream": "@sim/sim-model", "cache": {"ttl": 60}}
        )
        assert made.status_code == 201, made.text
        slug = made.json()["slug"]
        miss = _ask(client, "ratio", "ratio [sim tokens=5]")
        assert miss.headers["x-aigw-cache"] == "miss"
        for _ in range(3):
            assert _ask(client, "ratio", "ratio [sim tokens=5]").headers["x-aigw-cache"] == "hit"
        lines = (miss.parse().model_extra or {})["generation_context"]["generated_usage"]
        miss_cost = sum(Decimal(repr(line["amount"])) for line in lines)

        def stats() -> dict[str, Any]:
            found: dict[str, Any] = http.get("/usage/cache").json()
            return next(g for g in found["gateways"] if g["slug"] == slug)

        eventually(
            lambda: (stats()["hits"], stats()["misses"]) == (3, 1), 15.0, "the cache's usage in metering"
        )
        mine = stats()
        bypass = _ask(client, "ratio", "ratio [sim tokens=5]", extra_headers={"Cache-Control": "no-cache"})
        assert bypass.headers["x-aigw-cache"] == "miss"
    assert mine["hit_ratio"] == 0.75
    assert Decimal(mine["hit_amount"]) == 0  # the default price
    assert Decimal(mine["estimated_savings"]) == (3 * miss_cost).quantize(Decimal("1E-12"))

    # the same in the edge's Prometheus metrics, by the gateway's slug
    scraped = httpx.get(metered.base_url.removesuffix("/v1") + "/metrics", timeout=5).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
    }

    def count(result: str) -> float:
        return samples.get(("aigw_cache_requests_total", (("gateway", slug), ("result", result))), 0.0)

    assert (count("hit"), count("miss"), count("bypass")) == (3, 1, 1)
    saved = samples[("aigw_cache_saved_usd_total", (("gateway", slug),))]
    assert saved == pytest.approx(float(3 * miss_cost), rel=1e-9) and saved > 0


def test_a_semantic_match_answers_a_paraphrase_and_nothing_else(
    client: OpenAI, metered: Stack, upstream_calls: Any
) -> None:
    assert metered.demo is not None
    with api_client(metered, metered.demo.key) as http:
        made = http.post(
            "/gateways",
            json={"name": "semantic", "upstream": "@sim/sim-model", "cache": {"ttl": 60, "similarity": 0.9}},
        )
        assert made.status_code == 201, made.text
        assert made.json()["cache"]["similarity"] == 0.9
    question = "What is the capital city of France? [sim tokens=6]"
    first = _ask(client, "semantic", question)
    assert first.headers["x-aigw-cache"] == "miss" and upstream_calls() == 1
    # stored in the background (indexed by meaning first): once an equal request hits, so does meaning
    eventually(
        lambda: _ask(client, "semantic", question).headers["x-aigw-cache"] == "hit", 10.0, "the answer stored"
    )
    calls = upstream_calls()
    again = _ask(client, "semantic", "what's the capital city of france? [sim tokens=6]")
    assert again.headers["x-aigw-cache"] == "hit" and upstream_calls() == calls
    context = (again.parse().model_extra or {})["generation_context"]
    assert context["cache"]["request_id"] == first.headers["x-request-id"]
    assert 0.9 <= context["cache"]["similarity"] < 1
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content

    other = _ask(client, "semantic", "Write a short poem about the sea. [sim tokens=6]")
    assert other.headers["x-aigw-cache"] == "miss" and upstream_calls() == calls + 1
    # other parameters are another shape: never matched by meaning
    hotter = _ask(client, "semantic", question, temperature=1.5)
    assert hotter.headers["x-aigw-cache"] == "miss" and upstream_calls() == calls + 2
