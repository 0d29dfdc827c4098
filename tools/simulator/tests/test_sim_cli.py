"""Starting the simulator: the ready line, flags, env vars and their precedence."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

if TYPE_CHECKING:
    from conftest import SimProcess

MESSAGES = [{"role": "user", "content": "hi"}]


def test_port_zero_picks_a_port_and_the_ready_line_reports_it(spawn_sim: Callable[..., SimProcess]) -> None:
    sim = spawn_sim(port=0)
    ready = sim.wait_for_ready_line()

    assert ready["service"] == "simulator"
    assert ready["port"] > 0
    assert ready["url"] == f"http://127.0.0.1:{ready['port']}"
    assert httpx.get(f"{ready['url']}/healthz").status_code == 200


def test_env_vars_set_defaults_and_flags_win_over_them(start_sim: Callable[..., SimProcess]) -> None:
    sim = start_sim("--tokens", "2", env={"AIGW_SIM_TOKENS": "9", "AIGW_SIM_CACHED_TOKENS": "3"})

    completion = sim.client().chat.completions.create(model="m", messages=MESSAGES)

    assert completion.choices[0].message.content == "sim0 sim1"
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 3


def test_startup_fault_applies_to_every_request_unless_a_request_clears_it(
    start_sim: Callable[..., SimProcess],
) -> None:
    sim = start_sim("--fault", "500")
    client = sim.client()

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    cleared = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-sim-fault": "none"}
    )
    assert cleared.choices[0].finish_reason == "stop"


def test_bad_flag_values_stop_startup_with_a_message(spawn_sim: Callable[..., SimProcess]) -> None:
    sim = spawn_sim("--fault", "418")

    assert sim.process.wait(timeout=15) == 2
    assert "bad value '418' for fault" in sim.log()
