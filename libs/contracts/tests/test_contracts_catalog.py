"""The shipped catalog is data: a versioned, dated file whose every entry becomes a valid upstream."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from aigw_contracts.api import PARAMETERS
from aigw_contracts.catalog import builtin_catalog, catalog_data

PROVIDERS = {
    "openai",
    "anthropic",
    "google",
    "bedrock",
    "groq",
    "deepseek",
    "mistral",
    "xai",
    "together",
    "fireworks",
    "openrouter",
    "cerebras",
}


def test_the_catalog_file_is_versioned_and_dated() -> None:
    data = catalog_data()
    assert data["version"] >= 2
    date.fromisoformat(data["date"])
    assert "per million" in data["prices_note"]


def test_every_provider_the_issue_names_is_in_the_catalog_with_an_https_base_url() -> None:
    catalog = builtin_catalog()
    assert {u.provider for u in catalog} == PROVIDERS
    assert all(u.base_url.startswith("https://") for u in catalog)
    assert len({u.id for u in catalog}) == len(catalog)


def test_prices_are_per_token_and_exact() -> None:
    by_id = {u.id: u for u in builtin_catalog()}
    sonnet = by_id["@anthropic/claude-sonnet-4-5"].prices
    assert (sonnet.input, sonnet.output) == (Decimal("0.000003"), Decimal("0.000015"))
    assert (sonnet.cached_input, sonnet.cache_write, sonnet.cache_write_1h) == (
        Decimal("3E-7"),
        Decimal("0.00000375"),
        Decimal("0.000006"),
    )
    assert by_id["@openai/gpt-5-mini"].prices.input == Decimal("2.5E-7")
    for upstream in by_id.values():
        if upstream.embeds:
            continue  # below
        assert upstream.prices.input > 0 and upstream.prices.output > 0, upstream.id
        assert upstream.prices.cached_input <= upstream.prices.input, upstream.id
        assert upstream.context_window and upstream.context_window >= 32_000


def test_embedding_models_are_marked_and_priced_by_input_alone() -> None:
    by_id = {u.id: u for u in builtin_catalog()}
    small = by_id["@openai/text-embedding-3-small"]
    assert small.embeds and small.modalities == {"input": ["text"], "output": ["embedding"]}
    assert (small.prices.input, small.prices.output) == (Decimal("2E-8"), 0)
    embedders = {u.id for u in by_id.values() if u.embeds}
    assert embedders == {
        "@openai/text-embedding-3-small",
        "@openai/text-embedding-3-large",
        "@openai/text-embedding-ada-002",
        "@mistral/mistral-embed",
    }
    for upstream_id in embedders:
        assert by_id[upstream_id].prices.input > 0
    assert not by_id["@openai/gpt-5-mini"].embeds


def test_the_wire_format_and_parameters_come_from_the_provider() -> None:
    by_id = {u.id: u for u in builtin_catalog()}
    assert by_id["@anthropic/claude-haiku-4-5"].api == "anthropic"
    assert by_id["@google/gemini-2.5-flash"].api == "gemini"
    assert by_id["@groq/llama-3.3-70b-versatile"].api is None  # OpenAI-compatible
    for upstream in by_id.values():
        assert upstream.parameters is not None, upstream.id
        known = {"dimensions", "encoding_format", "user"} if upstream.embeds else set(PARAMETERS)
        assert set(upstream.parameters) <= known, upstream.id  # names a request may send
    assert "logprobs" not in by_id["@anthropic/claude-haiku-4-5"].parameters  # type: ignore[operator]


def test_an_entry_without_the_new_fields_serializes_as_before() -> None:
    """Rolling upgrades: a service of the previous version forbids unknown fields."""
    from aigw_contracts import Upstream

    old = Upstream(id="x", model="m", base_url="https://h/v1")
    dumped = old.model_dump(mode="json")
    assert not {"api", "modalities", "parameters"} & set(dumped)
    assert set(dumped["prices"]) == {"input", "output", "cached_input"}
