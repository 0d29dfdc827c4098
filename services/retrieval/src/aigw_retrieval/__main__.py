"""`aigw-retrieval`: the retrieval service (see `app.py`)."""

from __future__ import annotations

import os

from aigw_runtime.logs import setup_logging
from aigw_runtime.service import serve

from .settings import RetrievalSettings


def main() -> None:
    settings = RetrievalSettings()
    setup_logging("retrieval", settings.log_level)
    # Before numpy loads: BLAS reads its thread count once (see RetrievalSettings.blas_threads).
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(settings.blas_threads))

    from .app import create_app

    service, _ = create_app(settings)
    serve(service)


if __name__ == "__main__":
    main()
