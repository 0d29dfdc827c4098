"""`aigw-metering`: usage events from JetStream into ClickHouse; usage reports over NATS."""

from __future__ import annotations

import asyncio
import logging
import signal

from aigw_runtime.logs import log_ready, setup_logging

from .app import MeteringService
from .settings import MeteringSettings

log = logging.getLogger("aigw.metering")


async def _serve(settings: MeteringSettings) -> None:
    service = MeteringService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)

    def ready() -> None:
        log_ready(store=service.store.target.redacted, health_port=settings.metering_health_port or None)

    await service.run(ready)
    log.info("stopped", extra={"inserted_lines": service.health.inserted_lines})


def main() -> None:
    settings = MeteringSettings()
    setup_logging("metering", settings.log_level)
    # clickhouse-connect's HTTP pool logs each refused connection; our "store unavailable" line
    # already says it once per attempt, with the backoff.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
