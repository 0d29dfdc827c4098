from __future__ import annotations

import uvloop

from aigw_runtime.logs import log_ready, setup_logging

from .app import create_app
from .settings import RouterSettings


def main() -> None:
    settings = RouterSettings()
    setup_logging("router", settings.log_level)
    app, _ = create_app(settings)

    @app.after_startup
    async def ready() -> None:
        log_ready(router_id=settings.router_id)

    uvloop.run(app.run())  # measurably cheaper per message than asyncio's default loop


if __name__ == "__main__":
    main()
