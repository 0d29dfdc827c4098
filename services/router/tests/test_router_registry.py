import pytest

from aigw_contracts import ConfigSnapshot, Gateway, Upstream, errors
from aigw_router.registry import Registry

GID = "01990000-0000-7000-8000-00000000abcd"
OTHER = "01990000-0000-7000-8000-00000000ffff"


def _registry() -> Registry:
    own = Upstream(id="own-1", kind="own", model="m", base_url="http://x/v1", tenant="t1", api_key="sk")
    return Registry.from_snapshot(
        ConfigSnapshot(
            upstreams=[own],
            gateways=[
                Gateway(id=GID, name="support", tenant="t1", upstream="@openai/gpt-5-mini"),
                Gateway(id=OTHER, name="other", tenant="t2", upstream="own-1"),
            ],
        )
    )


@pytest.mark.parametrize("model", [GID, "support:abcd", "support"])
def test_gateway_resolves_by_id_slug_and_name(model: str) -> None:
    gateway, upstream = _registry().resolve(model, "t1")
    assert gateway is not None and gateway.id == GID
    assert upstream.id == "@openai/gpt-5-mini"


def test_catalog_tag_is_called_directly() -> None:
    gateway, upstream = _registry().resolve("@openai/gpt-5-mini", "t1")
    assert gateway is None and upstream.model == "gpt-5-mini"


def test_other_tenants_gateway_is_not_found_like_an_unknown_one() -> None:
    reg = _registry()
    with pytest.raises(errors.NotFound) as foreign:
        reg.resolve(OTHER, "t1")
    with pytest.raises(errors.NotFound) as unknown:
        reg.resolve("01990000-0000-7000-8000-000000000000", "t1")
    assert foreign.value.status == unknown.value.status == 404


def test_own_upstream_of_another_tenant_is_unusable() -> None:
    with pytest.raises(errors.Unavailable):
        _registry().resolve(OTHER, "t2")  # own-1 belongs to t1


def test_public_keys_need_the_full_id() -> None:
    reg = _registry()
    assert reg.resolve(GID, "t1", "public")[0] is not None
    with pytest.raises(errors.Forbidden):
        reg.resolve("support:abcd", "t1", "public")
    with pytest.raises(errors.Forbidden):
        reg.resolve("@openai/gpt-5-mini", "t1", "public")


def test_catalog_prices_are_exact_and_own_endpoints_bill_zero() -> None:
    reg = _registry()
    mini = reg.upstreams["@openai/gpt-5-mini"]
    assert str(mini.prices.input) == "2.5E-7" and str(mini.prices.cached_input) == "2.5E-8"
    assert reg.upstreams["own-1"].billed_prices().input == 0


def test_models_list_holds_own_gateways_and_catalog_only() -> None:
    ids = {mid for mid, *_ in _registry().models_for("t1")}
    assert GID in ids and "support:abcd" in ids and "@openai/gpt-5-mini" in ids
    assert OTHER not in ids and "other:ffff" not in ids


def test_only_the_catalog_providers_the_deployment_offers_are_listed_and_callable() -> None:
    reg = _registry()
    everything = {mid for mid, *_ in reg.models_for("t1")}
    assert "@anthropic/claude-sonnet-4-5" in everything and "@groq/llama-3.1-8b-instant" in everything
    reg.catalog_providers = frozenset({"openai"})
    offered = {mid for mid, *_ in reg.models_for("t1")}
    assert "@openai/gpt-5-mini" in offered and GID in offered  # gateways are always listed
    assert not {m for m in offered if m.startswith("@") and not m.startswith("@openai/")}
    with pytest.raises(errors.NotFound):
        reg.resolve("@anthropic/claude-sonnet-4-5", "t1")
    assert reg.resolve("@openai/gpt-5-mini", "t1")[1].id == "@openai/gpt-5-mini"


def test_fallbacks_keep_their_order_and_skip_what_the_tenant_cannot_use() -> None:
    chain = ["@openai/gpt-5-nano", "own-1", "gone", "@openai/gpt-5-mini"]
    mine = Gateway(id=GID, name="support", tenant="t1", upstream="own-1", fallbacks=chain)
    theirs = Gateway(id=OTHER, name="other", tenant="t2", upstream="@openai/gpt-5", fallbacks=chain)
    reg = _registry()
    assert [u.id for u in reg.fallbacks(mine)] == ["@openai/gpt-5-nano", "own-1", "@openai/gpt-5-mini"]
    assert [u.id for u in reg.fallbacks(theirs)] == [
        "@openai/gpt-5-nano",
        "@openai/gpt-5-mini",
    ]  # own-1 is t1's
