"""`aigw-worker` / `python -m aigw_worker`: the inference worker, configured from `AIGW_*` env vars."""

from __future__ import annotations

from aigw_runtime.logs import setup_logging
from aigw_runtime.service import serve

from .app import create_app
from .settings import WorkerSettings


def main() -> None:
    settings = WorkerSettings()
    setup_logging("worker", settings.log_level)
    service, _ = create_app(settings)
    serve(service)


if __name__ == "__main__":
    main()
