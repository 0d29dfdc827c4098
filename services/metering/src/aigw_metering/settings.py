"""Metering settings, from `AIGW_*` environment variables (one object, passed in)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aigw_contracts import streams


class MeteringSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIGW_")

    nats_url: str = "nats://127.0.0.1:4222"
    log_level: str = "INFO"

    # Where usage lines go. `chdb://<path>`: the embedded ClickHouse (chDB) in this process, data in
    # the directory <path> (`chdb:///abs/path` or `chdb://relative/path`; one process per path).
    # `http(s)://user:password@host:8123/<database>`: a ClickHouse server.
    metering_dsn: str = "chdb://.aigw/usage.chdb"
    # The database for the tables (a server DSN's path, when it has one, wins).
    metering_database: str = Field(default="aigw", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    # A batch is inserted when it holds this many lines or its first event is this old. Bigger
    # batches make fewer ClickHouse parts (many tiny inserts → "too many parts") and more lines/s;
    # the delay bounds how stale the usage tables are when traffic is light.
    metering_batch_lines: int = Field(default=20_000, ge=1)
    metering_batch_delay_s: float = Field(default=0.5, gt=0)
    metering_fetch: int = Field(default=2_000, ge=1)  # events asked of JetStream per pull

    # JetStream redelivers an event not acked within this time (after a crash, say). Held events
    # (ClickHouse down) are kept alive with in-progress acks, so this is only the crash delay.
    metering_ack_wait_s: float = Field(default=30.0, gt=0)
    # Retries of an unavailable store back off exponentially up to this.
    metering_backoff_initial_s: float = Field(default=0.2, gt=0)
    metering_backoff_max_s: float = Field(default=15.0, gt=0)
    # While idle, check the store this often so readiness reflects an outage before traffic does.
    metering_ping_interval_s: float = Field(default=5.0, gt=0)
    metering_insert_timeout_s: float = Field(default=60.0, gt=0)  # ClickHouse server only

    # Health over HTTP for supervisors: GET /healthz (alive) and GET /readyz (200 when the store
    # takes inserts and NATS is connected, else 503); both answer a JSON snapshot. 0: off.
    metering_health_host: str = "127.0.0.1"
    metering_health_port: int = Field(default=0, ge=0, le=65535)

    metering_stream_replicas: int = Field(default=1, ge=1, le=5)
    metering_stream_max_age_s: float = streams.USAGE_MAX_AGE_S
    metering_shutdown_grace_s: float = Field(default=10.0, gt=0)
