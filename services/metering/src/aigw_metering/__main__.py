"""`aigw-metering`: usage events from JetStream into ClickHouse; usage reports over NATS."""

from __future__ import annotations

import asyncio
import logging

from aigw_runtime.logs import setup_logging

from .app import MeteringService
from .settings import MeteringSettings

log = logging.getLogger("aigw.metering")


async def _serve(settings: MeteringSettings) -> None:
    service = MeteringService(settings)
    await service.run()
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
