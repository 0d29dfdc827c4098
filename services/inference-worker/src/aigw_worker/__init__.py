"""aigw inference worker: calls upstream models and streams their answers back over NATS."""

from .app import create_app
from .settings import WorkerSettings

__all__ = ["WorkerSettings", "create_app"]
