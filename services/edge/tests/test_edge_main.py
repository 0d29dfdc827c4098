"""`aigw-edge` as a process: starts from the environment, logs JSON, says ready, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx

from aigw_contracts import ChatEnvelope
from aigw_contracts.events import EventKind
from aigw_devstack.nats import NatsServer
from aigw_devstack.procs import Process, free_port

from .conftest import PEPPER, FakeRouter, Keys, completion, seed_store


def _edge_binary() -> str:
    here = Path(sys.executable).parent / "aigw-edge"
    return str(here) if here.exists() else "aigw-edge"


async def test_the_console_script_serves_logs_json_and_stops_on_sigterm(
    nats_server: NatsServer, router: FakeRouter, tmp_path: Path
) -> None:
    keys = Keys()
    await seed_store(nats_server.url, keys.snapshot())
    port = free_port()
    env = {
        "AIGW_NATS_URL": nats_server.url,
        "AIGW_PORT": str(port),
        "AIGW_HOST": "127.0.0.1",
        "AIGW_KEY_PEPPER": PEPPER,
    }
    log_path = tmp_path / "edge.log"
    proc = Process("edge", [_edge_binary()], log_path, env=env).start()
    try:
        proc.wait_ready(lambda: '"msg": "ready"' in log_path.read_text(), timeout=30)

        async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
            await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "from a process"))

        router.handler = answer
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert (await http.get("/readyz")).status_code == 200
            resp = await http.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {keys.good}"},
            )
        assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "from a process"

        proc.signal(signal.SIGTERM)
        assert proc.popen is not None
        # uvicorn shuts down gracefully, then re-raises the signal so the parent sees how it ended.
        assert proc.popen.wait(timeout=15) in (0, -signal.SIGTERM)
    finally:
        proc.stop()

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert all(line["service"] == "edge" for line in lines)
    assert any(line["msg"] == "Application shutdown complete." for line in lines)
    access = [line for line in lines if line["logger"] == "aigw.edge.access"]
    assert [(a["path"], a["status"], a["tenant"]) for a in access if a["path"].startswith("/v1/")] == [
        ("/v1/chat/completions", 200, "acme")
    ]
    assert keys.good not in log_path.read_text()
    assert os.environ.get("AIGW_KEY_PEPPER") != PEPPER  # the test did not leak settings into itself
