"""`aigw-retrieval`: the retrieval service (see `app.py`)."""

from __future__ import annotations

import asyncio
import os

from aigw_runtime.logs import log_ready, setup_logging

from .settings import RetrievalSettings


def main() -> None:
    settings = RetrievalSettings()
    setup_logging("retrieval", settings.log_level)
    # Before numpy loads: BLAS reads its thread count once (see RetrievalSettings.blas_threads).
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(settings.blas_threads))

    from .app import create_app

    app, _, service = create_app(settings)

    @app.after_startup
    async def ready() -> None:
        knowledge = service.knowledge
        log_ready(
            retrieval_id=settings.retrieval_id,
            store=settings.knowledge_store,
            embedder=knowledge.embedder.name if knowledge else None,
        )

    try:
        import uvloop
    except ImportError:  # optional: measurably cheaper per message than asyncio's default loop
        asyncio.run(app.run())
    else:
        uvloop.run(app.run())


if __name__ == "__main__":
    main()
