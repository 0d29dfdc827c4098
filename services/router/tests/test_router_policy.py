from typing import Any

import pytest

from aigw_contracts import ChatCompletionRequest, Gateway, ParameterRule
from aigw_router.policy import cap_output_tokens, effective_parameters, upstream_body


def _gateway(**kw: Any) -> Gateway:
    return Gateway(id="01990000-0000-7000-8000-000000000001", name="g", tenant="t", upstream="@x/y", **kw)


def _request(**kw: Any) -> ChatCompletionRequest:
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return ChatCompletionRequest(model="g", **kw)


def test_request_overrides_default_parameter() -> None:
    gw = _gateway(parameters={"temperature": 0.2})
    assert effective_parameters(_request(temperature=0.9), gw)["temperature"] == 0.9
    assert effective_parameters(_request(), gw)["temperature"] == 0.2


def test_locked_parameter_ignores_request_value() -> None:
    gw = _gateway(parameters={"temperature": 0.2}, policy={"temperature": ParameterRule(mode="locked")})
    assert effective_parameters(_request(temperature=1.5), gw)["temperature"] == 0.2


def test_parameters_outside_default_list_are_locked_unless_policy_says_so() -> None:
    gw = _gateway(parameters={"presence_penalty": 0.5})
    assert effective_parameters(_request(presence_penalty=-1.0), gw)["presence_penalty"] == 0.5
    opened = _gateway(policy={"presence_penalty": ParameterRule(mode="default")})
    assert effective_parameters(_request(presence_penalty=-1.0), opened)["presence_penalty"] == -1.0


def test_clamped_parameter_is_held_in_range() -> None:
    gw = _gateway(policy={"temperature": ParameterRule(mode="clamped", min=0.1, max=0.7)})
    assert effective_parameters(_request(temperature=1.9), gw)["temperature"] == 0.7
    assert effective_parameters(_request(temperature=0.0), gw)["temperature"] == 0.1
    assert effective_parameters(_request(temperature=0.5), gw)["temperature"] == 0.5


def test_direct_catalog_call_takes_request_parameters() -> None:
    assert effective_parameters(_request(top_p=0.3, seed=7), None) == {"top_p": 0.3, "seed": 7}


def test_instructions_come_first_and_prefill_last() -> None:
    gw = _gateway(instructions="Be terse.", prefill="Answer:")
    req = _request(
        messages=[{"role": "system", "content": "client system"}, {"role": "user", "content": "q"}]
    )
    body = upstream_body(req, gw, {})
    roles = [(m["role"], m["content"]) for m in body["messages"]]
    assert roles == [
        ("system", "Be terse."),
        ("system", "client system"),
        ("user", "q"),
        ("assistant", "Answer:"),
    ]


def test_output_token_cap_applies_to_both_limits_and_sets_one_when_absent() -> None:
    params: dict[str, Any] = {"max_tokens": 10_000}
    cap_output_tokens(params, 512)
    assert params == {"max_tokens": 512}
    empty: dict[str, Any] = {}
    cap_output_tokens(empty, 512)
    assert empty == {"max_completion_tokens": 512}


def test_clamp_refuses_non_numbers() -> None:
    from aigw_contracts import errors

    gw = _gateway(policy={"seed": ParameterRule(mode="clamped", min=0, max=10)})
    with pytest.raises(errors.InvalidRequest):
        effective_parameters(
            _request(stop="x"), _gateway(policy={"stop": ParameterRule(mode="clamped", max=1)})
        )
    assert effective_parameters(_request(seed=99), gw)["seed"] == 10


def test_public_keys_set_only_a_small_parameter_set() -> None:
    gw = _gateway(parameters={"seed": 1}, policy={"seed": ParameterRule(mode="default")})
    used = effective_parameters(
        _request(temperature=0.4, seed=99, tools=[{"type": "function", "function": {"name": "f"}}]),
        gw,
        "public",
    )
    assert used == {"temperature": 0.4, "seed": 1}


def test_n_logprobs_and_logit_bias_are_overridable_by_private_keys_only() -> None:
    gw = _gateway()
    asked = {"n": 2, "logprobs": True, "top_logprobs": 3, "logit_bias": {"50256": -100.0}}
    assert effective_parameters(_request(**asked), gw) == asked
    assert effective_parameters(_request(**asked), gw, "public") == {}
    locked = _gateway(parameters={"n": 1}, policy={"n": ParameterRule(mode="locked")})
    assert effective_parameters(_request(n=4), locked)["n"] == 1
    clamped = _gateway(policy={"n": ParameterRule(mode="clamped", max=2)})
    assert effective_parameters(_request(n=4), clamped)["n"] == 2


def test_honoured_parameters_reach_the_upstream_body() -> None:
    req = _request(n=2, logprobs=True, top_logprobs=1, logit_bias={"7": 5.0}, prediction={"type": "content"})
    body = upstream_body(req, _gateway(), effective_parameters(req, _gateway()))
    assert (body["n"], body["logprobs"], body["top_logprobs"], body["logit_bias"]) == (2, True, 1, {"7": 5.0})
    assert body["prediction"] == {"type": "content"}  # passed through as sent


@pytest.mark.parametrize(
    ("asked", "gateway", "param"),
    [
        (
            {"logprobs": True, "top_logprobs": 2},
            {"parameters": {"logprobs": False}, "policy": {"logprobs": ParameterRule(mode="locked")}},
            "top_logprobs",
        ),
        (
            {"logprobs": True, "top_logprobs": 2},
            {"policy": {"logprobs": ParameterRule(mode="locked")}},
            "top_logprobs",
        ),
        ({"tool_choice": "auto"}, {}, "tool_choice"),
        ({"parallel_tool_calls": False}, {}, "parallel_tool_calls"),
    ],
)
def test_a_request_half_that_cannot_work_without_the_other_is_a_400(
    asked: dict[str, Any], gateway: dict[str, Any], param: str
) -> None:
    from aigw_contracts import errors

    gw = _gateway(**gateway)
    req = _request(**asked)
    with pytest.raises(errors.InvalidRequest) as err:
        upstream_body(req, gw, effective_parameters(req, gw))
    assert err.value.param == param


def test_the_gateway_may_supply_the_other_half() -> None:
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    gw = _gateway(parameters={"tools": tools})
    req = _request(tool_choice="required", parallel_tool_calls=False)
    body = upstream_body(req, gw, effective_parameters(req, gw))
    assert (
        body["tools"] == tools and body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    )


def test_n_above_one_is_refused_on_a_gateway_whose_model_searches_itself() -> None:
    from aigw_contracts import errors
    from aigw_contracts.knowledge import GatewayKnowledge

    gw = _gateway(knowledge=GatewayKnowledge(collection="c", strategy="QueryFunction"))
    with pytest.raises(errors.InvalidRequest) as err:
        upstream_body(_request(n=2), gw, effective_parameters(_request(n=2), gw))
    assert err.value.param == "n"
    assert upstream_body(_request(n=1), gw, {"n": 1})["n"] == 1
