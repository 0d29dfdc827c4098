"""The worker's settings, read once from the environment (`AIGW_` prefix) and passed around as one object."""

from __future__ import annotations

import uuid
from decimal import Decimal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIGW_")

    nats_url: str = "nats://127.0.0.1:4222"
    worker_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    # Catalog providers' API keys: `AIGW_PROVIDER_KEYS='{"openai": "sk-…", "anthropic": "…"}'`. They
    # live only here (never on the bus, never in config data) and are never logged.
    provider_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # The usual variable, as the fallback key for provider "openai".
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AIGW_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    # Timeouts of one upstream attempt, in seconds: the defaults of `aigw_contracts.Timeouts`, which
    # an upstream's `timeouts` and a gateway's `timeouts` override (the gateway's win). The
    # request's deadline always bounds them.
    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    # Until the upstream's first token (a stream's first event; a whole answer's response headers).
    # Unset: a stream's idle timeout, a whole answer's total (providers such as OpenAI send a whole
    # answer's headers only once it is generated).
    upstream_ttft_timeout: float | None = Field(default=None, gt=0)
    # A stream whose upstream sends nothing for this long ends with a 504 error event. Keep it below
    # the edge's stream idle timeout, so this more precise error reaches the client first.
    upstream_idle_timeout: float = Field(default=60.0, gt=0)
    # Total time for one upstream attempt when the envelope's deadline is further away (it is the
    # upper bound; the deadline always wins when it is nearer).
    upstream_timeout: float = Field(default=600.0, gt=0)
    # Retries before anything reached the client (`retry.py`): of one upstream before the gateway's
    # next fallback (an upstream's `max_retries` overrides it), and of all upstreams of one request.
    upstream_max_retries: int = Field(default=1, ge=0, le=5)
    upstream_retry_budget: int = Field(default=2, ge=0, le=10)
    # Exponential backoff between retries: the first waits about `backoff` (with jitter), each next
    # twice as long, at most `backoff_max`. An upstream's Retry-After is honoured up to
    # `retry_after_max`; a longer one moves on to the next fallback (or ends the request) at once.
    upstream_retry_backoff: float = Field(default=0.2, ge=0, le=60)
    upstream_retry_backoff_max: float = Field(default=2.0, ge=0, le=600)
    upstream_retry_after_max: float = Field(default=10.0, ge=0, le=600)
    # Circuit breakers, per upstream deployment (`circuits.py`): this many failed attempts in a row
    # take it out of rotation for `circuit_cooldown` seconds, then one request probes it.
    circuit_failures: int = Field(default=5, ge=1, le=1000)
    circuit_cooldown: float = Field(default=30.0, gt=0, le=3600)
    # What one upstream answer may take of the worker every tenant shares (a tenant's own endpoint is
    # not trusted to be sane): a whole (non-stream) answer's body after decompression, and one line
    # (and one event) of a streamed answer. Beyond either, that request alone fails with a 502
    # `upstream_response_too_large`; the bytes read stop there.
    upstream_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    upstream_max_sse_line_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Upstream calls running at once; up to `max_queued` more wait for a slot, beyond that a request
    # is refused at once with a 503 (the SDKs retry it, possibly on another worker).
    max_inflight: int = Field(default=512, ge=1)
    max_queued: int = Field(default=512, ge=0)
    # On SIGTERM: stop taking requests, let running ones finish within this, then end them with 503.
    shutdown_grace: float = Field(default=20.0, ge=0)
    # A usage event is retried for this long (inside the usage stream's 120 s duplicate window, so a
    # retry of a publish whose ack was lost is still deduplicated), then logged as lost.
    usage_retry_window: float = Field(default=100.0, gt=0)
    # Usage publishes awaiting the stream's ack at once; beyond that, events wait in memory.
    usage_in_flight: int = Field(default=1024, ge=1)
    # Seconds usage events gather before they are published together (fewer writes and wake-ups).
    usage_linger: float = Field(default=0.02, ge=0, le=1)
    # CIDRs an own endpoint may resolve to although they are not public (SSRF guard), e.g. "10.1.0.0/16".
    # The same setting as the edge's, which checks URLs when they are saved.
    upstream_allowlist: list[str] = Field(default_factory=list)
    # Opens tenants' upstream API keys, sealed by the edge (`aigw_runtime.secretbox`).
    secrets_key: SecretStr = SecretStr("")
    # Spend control (`spend.py`): requests hold what they may cost against the balances and budgets
    # in the spend bucket before calling their upstream. A hold outlives the request's deadline by
    # `spend_hold_grace` seconds, then expires on its own (a worker that died frees it that way).
    spend_enabled: bool = True
    spend_hold_grace: float = Field(default=30.0, ge=0)
    # Output tokens a request may generate when neither it (`max_tokens`) nor its upstream (its
    # context window) says: what is held for it.
    spend_max_output_tokens: int = Field(default=128_000, ge=1)
    # Tokens a knowledge tool round's results may add to the next round's prompt, and the most one
    # round's searches may cost (USD): what a `QueryFunction` gateway's request holds per round.
    spend_tool_result_tokens: int = Field(default=16_000, ge=0)
    spend_tool_round_cost: Decimal = Field(default=Decimal("0.001"), ge=0)
    # Slices of budget (`aigw_runtime.spendlease`): this worker holds a slice of each account it
    # serves (sized for `spend_lease_holds` requests like the latest, at most `spend_lease_share`
    # of what the account has left) and takes requests' holds from it without a KV write; spend is
    # written every `spend_lease_flush` seconds; a slice unused for `spend_lease_idle` seconds is
    # given back. Off: one KV write per request before its upstream call.
    spend_leases: bool = True
    spend_lease_holds: int = Field(default=32, ge=1)
    spend_lease_share: Decimal = Field(default=Decimal("0.25"), gt=0, le=1)
    spend_lease_idle: float = Field(default=1.0, gt=0)
    spend_lease_flush: float = Field(default=0.1, ge=0)
    log_level: str = "INFO"
    # Seconds between "alive" events for each request this worker holds (`aigw_runtime.heartbeat`);
    # the edge's AIGW_HOLDER_TIMEOUT must be a few of these.
    heartbeat_interval: float = Field(default=1.0, gt=0)
    # GET /healthz and /readyz for supervisors (k8s probes, compose healthchecks); unset: not served.
    health_host: str = "127.0.0.1"
    health_port: int | None = None

    def provider_key(self, provider: str) -> str | None:
        key = self.provider_keys.get(provider)
        if key is None and provider == "openai":
            key = self.openai_api_key
        return key.get_secret_value() if key is not None else None
