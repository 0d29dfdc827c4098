"""`aigw-router` / `python -m aigw_router`: the router, configured from `AIGW_*` env vars."""

from __future__ import annotations

from aigw_runtime.logs import setup_logging
from aigw_runtime.service import serve

from .app import create_app
from .settings import RouterSettings


def main() -> None:
    settings = RouterSettings()
    setup_logging("router", settings.log_level)
    serve(create_app(settings))


if __name__ == "__main__":
    main()
