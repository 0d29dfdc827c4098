"""aigw metering: usage events from JetStream into ClickHouse (a server, or chDB in-process),
usage reports over NATS request-reply, health over HTTP."""

from .app import MeteringService
from .settings import MeteringSettings
from .store import Store, StoreUnavailable, parse_dsn

__all__ = ["MeteringService", "MeteringSettings", "Store", "StoreUnavailable", "parse_dsn"]
