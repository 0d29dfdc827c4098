"""Upstream timeouts and retries as configuration: checked when saved, carried to the worker."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aigw_contracts import Gateway, Timeouts, Upstream, UpstreamTarget
from aigw_contracts.ids import uuid7


def test_timeouts_are_positive_seconds_and_unknown_fields_are_refused() -> None:
    assert Timeouts(ttft=1.5).model_dump() == {"connect": None, "ttft": 1.5, "idle": None, "total": None}
    for bad in ({"ttft": 0}, {"idle": -1}, {"total": 10_000}, {"first_token": 1}):
        with pytest.raises(ValidationError):
            Timeouts.model_validate(bad)


def test_a_gateways_timeouts_are_laid_over_its_upstreams_field_by_field() -> None:
    upstream = Timeouts(connect=2, ttft=20, idle=10)
    assert Timeouts(ttft=3).over(upstream) == Timeouts(connect=2, ttft=3, idle=10)
    assert Timeouts(ttft=3).over(None) == Timeouts(ttft=3)


def test_an_upstreams_timeouts_and_retries_travel_with_its_call_target() -> None:
    upstream = Upstream(
        id="@sim/x",
        provider="sim",
        model="x",
        base_url="http://sim/v1",
        timeouts=Timeouts(total=30),
        max_retries=3,
    )
    target = UpstreamTarget.of(upstream)
    assert target.timeouts == Timeouts(total=30) and target.max_retries == 3
    with pytest.raises(ValidationError):
        Upstream(id="@sim/x", model="x", base_url="http://sim/v1", max_retries=6)
    gateway = Gateway.model_validate(
        {"id": uuid7(), "name": "g", "tenant": "t", "upstream": "@sim/x", "timeouts": {"ttft": 1}}
    )
    assert gateway.timeouts == Timeouts(ttft=1)
    # entries stored before these fields existed still load
    assert (
        Gateway.model_validate({"id": uuid7(), "name": "g", "tenant": "t", "upstream": "u"}).timeouts is None
    )


def test_entries_without_timeouts_serialize_as_before_the_fields_existed() -> None:
    """A previous version's services forbid unknown fields: unset ones are left out of the entry."""
    gateway = Gateway(id=uuid7(), name="g", tenant="t", upstream="u")
    assert "timeouts" not in gateway.model_dump() and "timeouts" not in gateway.model_dump_json()
    upstream = Upstream(id="@sim/x", model="x", base_url="http://sim/v1")
    assert not {"timeouts", "max_retries"} & set(upstream.model_dump())
    timed = gateway.model_copy(update={"timeouts": Timeouts(ttft=2)})
    assert Gateway.model_validate_json(timed.model_dump_json()).timeouts == Timeouts(ttft=2)
    kept = Upstream(id="@sim/x", model="x", base_url="http://sim/v1", max_retries=0)
    assert Upstream.model_validate(kept.model_dump()).max_retries == 0
