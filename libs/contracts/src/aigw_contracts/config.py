"""Configuration data: tenants, API keys, upstreams (with prices) and gateways.

This is data users manage, not code. The services hold it in memory; where it is stored and how
changes reach them is the store's business (a file for now).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from .api import DEFAULT_OVERRIDABLE, INFERENCE_PARAMETERS
from .knowledge import GatewayKnowledge


class Prices(BaseModel):
    """Per-token prices in USD, exact decimals (e.g. 2.5e-7 per input token).

    `cache_write` is what a provider charges for writing a prompt prefix into its cache (Anthropic's
    5-minute cache writes), `cache_write_1h` for a one-hour cache write (Anthropic), `reasoning` for
    reasoning ("thinking") tokens where a provider bills them apart from output; unset, reasoning
    tokens are output tokens (OpenAI, Anthropic and Gemini all bill them so)."""

    input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    cached_input: Decimal = Decimal(0)
    cache_write: Decimal = Decimal(0)
    cache_write_1h: Decimal | None = None
    reasoning: Decimal | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Unset and zero fields stay out, so an entry without them reads as it did before they existed.
        data = handler(self)
        if isinstance(data, dict):
            for name in ("cache_write", "cache_write_1h", "reasoning"):
                if name in data and (data[name] is None or data[name] in (0, "0")):
                    del data[name]
        return data


class Timeouts(BaseModel):
    """How long one call of an upstream may take, in seconds, per attempt (a retry or a fallback is
    a new attempt with its own clock). Unset fields take the next level's value: a gateway's
    `timeouts` over its upstream's, over the inference worker's settings (`AIGW_UPSTREAM_*_TIMEOUT`).
    The request's own deadline bounds them all.

    * `connect`: to open the TCP (and TLS) connection;
    * `ttft`: from sending the request to the upstream's first token: a stream's first event; a
      whole (non-stream) answer's response headers, which many providers send only once the answer
      is generated (so there it bounds the generation). Unset everywhere: a stream's `idle`, a whole
      answer's `total`;
    * `idle`: the longest silence between two reads of a stream once it has started;
    * `total`: one attempt, start to end.

    An attempt that times out before anything reached the client moves on to a retry or the
    gateway's next fallback (`aigw_worker.retry`)."""

    model_config = ConfigDict(extra="forbid")

    connect: float | None = Field(default=None, gt=0, le=600)
    ttft: float | None = Field(default=None, gt=0, le=3600)
    idle: float | None = Field(default=None, gt=0, le=3600)
    total: float | None = Field(default=None, gt=0, le=3600)

    def over(self, base: Timeouts | None) -> Timeouts:
        """These timeouts, with `base`'s values where these are unset."""
        if base is None:
            return self
        return Timeouts(
            connect=self.connect if self.connect is not None else base.connect,
            ttft=self.ttft if self.ttft is not None else base.ttft,
            idle=self.idle if self.idle is not None else base.idle,
            total=self.total if self.total is not None else base.total,
        )


# The wire format an upstream speaks (`aigw_worker.providers`): OpenAI's chat completions (OpenAI
# and every OpenAI-compatible provider or server), Anthropic's Messages, Gemini's generateContent,
# Azure OpenAI's deployments, AWS Bedrock's Converse.
Api = Literal["openai", "anthropic", "gemini", "azure", "bedrock"]

MAX_RETRIES = 5  # the most `Upstream.max_retries` may ask for


def _without_unset(data: Any, names: tuple[str, ...]) -> Any:
    """`data` (a model's dump) without the fields of `names` that are None: an entry that sets none
    of them serializes as it did before they existed, so a service of the previous version (whose
    models forbid unknown fields) still reads it during a rolling upgrade, and so does an import
    that does not know them."""
    if isinstance(data, dict):
        for name in names:
            if name in data and data[name] in (None, []):
                del data[name]
    return data


MAX_DEPLOYMENTS = 16
DEPLOYMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$"


class Deployment(BaseModel):
    """One place an upstream's model is served: its own base URL and/or API key (two OpenAI keys,
    or OpenAI plus an Azure deployment of the same model), with a weight. Requests spread over an
    upstream's deployments by weight, skipping those whose circuit is open or whose rate limit is
    used up (`aigw_worker.balance`). Unset `base_url`/`api_key` take the upstream's own."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=DEPLOYMENT_NAME)  # default: its position, "0", "1", …
    base_url: str | None = None
    api_key: str | None = Field(default=None, repr=False)  # sealed (secretbox), as `Upstream.api_key`
    weight: int = Field(default=1, ge=1, le=1000)


def deployment_names(deployments: list[Deployment]) -> list[str]:
    """Each deployment's name: its own, else its position."""
    return [d.name or str(i) for i, d in enumerate(deployments)]


def _unique_names(deployments: list[Deployment]) -> None:
    names = deployment_names(deployments)
    if len(set(names)) != len(names):
        raise ValueError("deployment names must be unique within an upstream")


class Upstream(BaseModel):
    """A model the gateway can call: a catalog model (operator's credentials) or a tenant's own endpoint.

    Catalog ids are tags like `@openai/gpt-5-mini`; credentials for a catalog provider live only with
    the inference workers (their settings), never in this data.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Literal["catalog", "own"] = "catalog"
    provider: str = "openai"
    model: str  # the name the upstream API expects
    base_url: str
    api_key: str | None = Field(default=None, repr=False)  # own endpoints only, sealed (secretbox)
    prices: Prices = Field(default_factory=Prices)
    tenant: str | None = None  # owner of an own endpoint
    context_window: int | None = None
    description: str = ""
    # Per attempt; a gateway's own `timeouts` win over these (see `Timeouts`).
    timeouts: Timeouts | None = None
    # Retries of this upstream before the gateway's next fallback (429, 408, 409, 5xx, connection
    # failures, timeouts; never once part of an answer reached the client). None: the worker's
    # `AIGW_UPSTREAM_MAX_RETRIES` (1).
    max_retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    # The wire format it speaks; None: OpenAI's chat completions.
    api: Api | None = None
    # What the model reads and writes ("text", "image", "audio", ...); None: not said.
    modalities: dict[str, list[str]] | None = None
    # The request parameters the provider honours for it (the catalog's data); None: not said.
    parameters: list[str] | None = None
    # Several places serving this model, spread by weight (see `Deployment`); empty: one deployment,
    # `base_url` with `api_key`.
    deployments: list[Deployment] = Field(default_factory=list, max_length=MAX_DEPLOYMENTS)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _without_unset(
            handler(self), ("timeouts", "max_retries", "api", "modalities", "parameters", "deployments")
        )

    @field_validator("deployments")
    @classmethod
    def _deployment_names(cls, deployments: list[Deployment]) -> list[Deployment]:
        _unique_names(deployments)
        return deployments

    def billed_prices(self) -> Prices:
        """Own endpoints are recorded at price 0: the tenant pays their provider, not us."""
        return self.prices if self.kind == "catalog" else Prices()

    @property
    def embeds(self) -> bool:
        """An embedding model (`modalities["output"]` says `embedding`): `POST /v1/embeddings`
        calls it, chat completions do not."""
        return self.modalities is not None and "embedding" in self.modalities.get("output", ())


class ParameterRule(BaseModel):
    """How a request may touch one inference parameter.

    * `default`: the gateway's value applies unless the request sets one;
    * `locked`: the gateway's value (or none) always applies; a request's value is ignored, and the
      parameters actually used are reported back, so callers can see it;
    * `clamped`: the request may set it, but the value is held inside [min, max].
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["default", "locked", "clamped"] = "default"
    min: float | None = None
    max: float | None = None


Complexity = Literal["low", "medium", "high"]


class AutoRouting(BaseModel):
    """A model router: a small `classifier` model rates the latest user request as low, medium or
    high complexity, and the gateway answers with the upstream set for that level (the gateway's
    own `upstream` when the classifier fails). The classification is billed under the
    `inference.resolving.routing_complexity.*` SKUs; the answer says the level in the
    `X-Model-Routed-Complexity` header."""

    model_config = ConfigDict(extra="forbid")

    classifier: str  # upstream ids, all of them
    low: str
    medium: str
    high: str

    def upstream_for(self, level: Complexity) -> str:
        return {"low": self.low, "medium": self.medium, "high": self.high}[level]

    @property
    def upstream_ids(self) -> list[str]:
        return [self.classifier, self.low, self.medium, self.high]


class ResponseCache(BaseModel):
    """A gateway's response cache (off unless set): a request equal to an earlier one (same gateway
    version, messages and parameters, after normalization; same tenant and key kind) within `ttl`
    seconds gets the earlier answer again, streamed if it asks for a stream, without an upstream
    call. A hit is billed `price` on its own SKU (`inference.cache.hit`) instead of tokens."""

    model_config = ConfigDict(extra="forbid")

    ttl: float = Field(default=3600.0, gt=0, le=30 * 24 * 3600.0, description="seconds an answer is reused")
    price: Decimal = Field(default=Decimal(0), ge=0, description="USD per cache hit")
    # Semantic match: a request whose conversation's text embeds (retrieval's local embedder) within
    # this cosine similarity of a cached one's, all else equal, gets its answer. None: exact only.
    similarity: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="semantic match: the least cosine similarity of the conversation's embedding "
        "to a cached one's (e.g. 0.95); unset: exact match only",
    )

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _without_unset(handler(self), ("similarity",))


class Gateway(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str  # UUIDv7
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    tenant: str
    upstream: str  # an Upstream id
    instructions: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    prefill: str | None = None
    policy: dict[str, ParameterRule] = Field(default_factory=dict)
    description: str = ""
    knowledge: GatewayKnowledge | None = None  # ground answers on a collection (RAG)
    # Upstream ids tried in order when the upstream fails before answering (429, 5xx, unreachable,
    # no answer in time): see `aigw_worker.call` for exactly when.
    fallbacks: list[str] = Field(default_factory=list, max_length=4)
    routing: AutoRouting | None = None  # pick the upstream by the request's complexity
    # Per attempt, for every upstream this gateway calls; over each upstream's own (see `Timeouts`).
    timeouts: Timeouts | None = None
    # Keep each request's and answer's body in the request log (redacted of secrets). Off (None)
    # unless asked: prompts are the tenant's data.
    log_payloads: bool | None = None
    # Counts this gateway's writes: 1 when created, +1 per update (the edge's management API sets
    # it). Entries written before it existed read as 1.
    version: int = Field(default=1, ge=1)
    cache: ResponseCache | None = None  # answers reused for equal requests (off by default)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _without_unset(handler(self), ("timeouts", "log_payloads", "cache"))

    @model_validator(mode="after")
    def _known_parameters(self) -> Gateway:
        for name in (*self.parameters, *self.policy):
            if name not in INFERENCE_PARAMETERS:
                raise ValueError(f"unknown inference parameter '{name}'")
        return self

    @property
    def slug(self) -> str:
        return f"{self.name}:{self.id[-4:]}"

    def rule(self, parameter: str) -> ParameterRule:
        rule = self.policy.get(parameter)
        if rule is not None:
            return rule
        return ParameterRule(mode="default" if parameter in DEFAULT_OVERRIDABLE else "locked")


class TenantLimits(BaseModel):
    """A tenant's plan rates, across all its keys and every edge replica (`aigw_contracts.ratelimits`).
    None: no limit."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1, le=10_000_000)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10_000_000_000)
    # Knowledge: searches per minute (direct searches and those grounding a gateway's answers),
    # documents inserted per UTC day, and collections the tenant may have.
    searches_per_minute: int | None = Field(default=None, ge=1, le=10_000_000)
    documents_per_day: int | None = Field(default=None, ge=1, le=1_000_000_000)
    collections: int | None = Field(default=None, ge=0, le=1_000_000)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _without_unset(handler(self), ("searches_per_minute", "documents_per_day", "collections"))


class Tenant(BaseModel):
    id: str
    name: str = ""
    limits: TenantLimits = Field(default_factory=TenantLimits)


class KeyLimits(BaseModel):
    """Rates one API key may use: requests and tokens per minute for the whole key, counted across
    every edge replica (`aigw_contracts.ratelimits`), and requests per minute for each client IP
    address using it (what keeps one visitor of a page embedding a public key from using up
    everyone's budget), counted by each edge replica alone. None: no limit."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1, le=10_000_000)
    requests_per_minute_per_ip: int | None = Field(default=None, ge=1, le=10_000_000)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10_000_000_000)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _without_unset(handler(self), ("tokens_per_minute",))


# A public key's per-IP limit when its creator sets none (public keys are meant to be embedded in
# web pages, where anyone can take them).
PUBLIC_KEY_DEFAULT_RPM_PER_IP = 60


class ApiKey(BaseModel):
    id: str
    tenant: str
    hash: str = Field(repr=False)  # keys.hash_secret(secret, pepper); never returned by any API
    kind: Literal["private", "public"] = "private"
    admin: bool = False  # may use the management API for its own tenant
    operator: bool = False  # may manage every tenant, catalog upstreams and tenants themselves
    name: str = ""
    expires_at: float | None = None
    revoked: bool = False
    created_at: float | None = None
    prefix: str = ""  # the secret's first characters, so a user can tell keys apart
    limits: KeyLimits = Field(default_factory=KeyLimits)


class ConfigSnapshot(BaseModel):
    """The whole configuration as one document (the file form, and export/import)."""

    tenants: list[Tenant] = Field(default_factory=list)
    keys: list[ApiKey] = Field(default_factory=list)
    upstreams: list[Upstream] = Field(default_factory=list)
    gateways: list[Gateway] = Field(default_factory=list)
