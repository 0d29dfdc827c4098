"""`aigw-worker` / `python -m aigw_worker`: the inference worker, configured from `AIGW_*` env vars."""

from __future__ import annotations

import asyncio

from aigw_runtime.logs import log_ready, setup_logging

from .app import create_app
from .settings import WorkerSettings


def main() -> None:
    settings = WorkerSettings()
    setup_logging("worker", settings.log_level)
    app, _, worker = create_app(settings)

    @app.after_startup
    async def ready() -> None:
        log_ready(
            worker_id=settings.worker_id,
            max_inflight=settings.max_inflight,
            event_publisher=type(worker.bus).__name__,
        )

    # FastStream.run handles SIGTERM/SIGINT: it runs the shutdown hook (drain) before closing NATS.
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        asyncio.run(app.run())
    else:
        uvloop.run(app.run())


if __name__ == "__main__":
    main()
