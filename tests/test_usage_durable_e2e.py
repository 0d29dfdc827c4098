"""A worker killed right after it answered has lost no bill: usage is stored before the last byte.

Before, the final event went out first and the usage event followed from memory 20 ms later, so a
SIGKILL in between lost the bill of requests the client had been answered (2 of 850 in the probe).
Here requests flow from several threads while the worker is killed; every request whose client got
its answer must be in ClickHouse.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_devstack.stack import Stack
from tests.conftest import eventually, start_stack

THREADS = 6


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("durable"), with_metering=True)
    yield stack
    stack.stop()


def test_every_answered_request_is_billed_although_the_worker_was_killed(metered: Stack) -> None:
    assert metered.demo is not None
    client = OpenAI(base_url=metered.base_url, api_key=metered.demo.key, max_retries=0, timeout=20)
    answered: list[str] = []
    failed = 0
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        nonlocal failed
        while not stop.is_set():
            try:
                reply = client.chat.completions.create(
                    model="demo", messages=[{"role": "user", "content": "bill me [sim tokens=3]"}]
                )
            except openai.APIError:
                with lock:
                    failed += 1
                continue
            with lock:
                answered.append(reply.id)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    eventually(lambda: len(answered) >= 40, 30.0, "requests answered before the kill")
    metered.procs["worker-0"].signal(signal.SIGKILL)  # while requests are in flight
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert failed >= 1  # the kill really hit requests in flight (they got errors, and no bill)

    http = httpx.Client(
        base_url=metered.base_url, headers={"Authorization": f"Bearer {metered.demo.key}"}, timeout=20
    )

    def billed() -> set[str]:
        resp = http.get("/usage", params={"group_by": "request", "limit": "1000"})
        if resp.status_code != 200:
            return set()
        return {row["request"] for row in resp.json()["rows"]}

    request_ids = {reply_id.removeprefix("chatcmpl-") for reply_id in answered}
    eventually(lambda: request_ids <= billed(), 20.0, f"all {len(request_ids)} answered requests billed")
