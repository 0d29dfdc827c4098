"""Faults of our own infrastructure: the client gets a clear error, never a hang."""

from __future__ import annotations

import signal
import time

import openai
import pytest
from openai import OpenAI

from tests.conftest import TEST_ENV, start_stack


def test_worker_killed_mid_stream_ends_the_stream_with_an_error_not_a_hang(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    stack = start_stack(tmp_path_factory.mktemp("chaos"))
    try:
        assert stack.demo is not None
        client = OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "long [sim tokens=400 token_ms=20]"}],
            stream=True,
        )
        received = 0
        started = time.monotonic()
        with pytest.raises(openai.APIError) as err:
            for _chunk in stream:
                received += 1
                if received == 3:
                    stack.procs["worker-0"].signal(signal.SIGKILL)
        elapsed = time.monotonic() - started
        assert received >= 3
        assert err.value.code == "deadline_exceeded" and "idle" in err.value.message
        # The edge's stream idle timeout bounds how long the client waits for a dead worker.
        assert elapsed < float(TEST_ENV["AIGW_STREAM_IDLE_TIMEOUT"]) + 5

        stack.stop_service("worker-0")
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "anyone?"}])
        assert refused.value.status_code == 503  # no worker left: refused at once, not after a timeout
    finally:
        stack.stop()
