"""aigw edge: the OpenAI-compatible HTTP front door (auth, validation, relay of NATS stream events)."""

from .app import EdgeApp, create_app
from .auth import KeyStore
from .settings import EdgeSettings

__all__ = ["EdgeApp", "EdgeSettings", "KeyStore", "create_app"]
