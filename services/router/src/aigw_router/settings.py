from __future__ import annotations

import uuid

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIGW_")

    nats_url: str = "nats://127.0.0.1:4222"
    router_id: str = uuid.uuid4().hex[:12]
    max_output_tokens: int | None = None  # operator cap on max_(completion_)tokens (OWASP LLM10)
    log_level: str = "INFO"
    # The catalog providers this deployment holds credentials for (the workers' AIGW_PROVIDER_KEYS),
    # e.g. '["openai", "anthropic"]': only their catalog models are listed by /v1/models and callable
    # by tag. Unset: every catalog model.
    catalog_providers: list[str] | None = None
    # Seconds an auto-routing gateway's complexity classifier may take; past that the gateway's own
    # upstream answers (`complexity.py`).
    classifier_timeout: float = Field(default=3.0, gt=0)
    # Seconds between "alive" events for requests held here (`aigw_runtime.heartbeat`).
    heartbeat_interval: float = 1.0
    # GET /healthz and /readyz for supervisors (k8s probes, compose healthchecks); unset: not served.
    health_host: str = "127.0.0.1"
    health_port: int | None = None
