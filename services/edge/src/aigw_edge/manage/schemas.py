"""Bodies of the management API. Outputs never carry a secret: key hashes and upstream API keys stay in."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aigw_contracts import ApiKey, Gateway, Timeouts, Upstream
from aigw_contracts.config import (
    DEPLOYMENT_NAME,
    MAX_DEPLOYMENTS,
    MAX_RETRIES,
    PUBLIC_KEY_DEFAULT_RPM_PER_IP,
    Api,
    AutoRouting,
    Deployment,
    KeyLimits,
    ParameterRule,
    Prices,
    ResponseCache,
    TenantLimits,
    deployment_names,
)
from aigw_contracts.knowledge import Collection, GatewayKnowledge, KnowledgeDocument

from ..tenancy import TENANT_ID_PATTERN


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


_GATEWAY_TIMEOUTS = (
    "seconds per upstream attempt (connect, ttft: time to first token, idle, total), for every "
    "upstream this gateway calls; over each upstream's own"
)
_UPSTREAM_TIMEOUTS = "seconds per attempt (connect, ttft, idle, total); a gateway's own win over these"
_MAX_RETRIES = (
    f"retries of this upstream (0-{MAX_RETRIES}) before the gateway's next fallback; unset: the worker's"
)
_DEPLOYMENTS = (
    f"up to {MAX_DEPLOYMENTS} places serving this model (base_url and/or api_key, weight); requests "
    "spread by weight, skipping open circuits and used-up rate limits"
)


class GatewayIn(_In):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="lower-case name; the slug adds :xxxx"
    )
    upstream: str = Field(description="an upstream id: a catalog tag like @openai/gpt-5-mini, or your own")
    instructions: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    prefill: str | None = None
    policy: dict[str, ParameterRule] = Field(default_factory=dict)
    description: str = ""
    knowledge: GatewayKnowledge | None = Field(
        default=None, description="ground answers on one of your collections (by id or name)"
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="upstream ids tried in order when the upstream fails before answering",
    )
    routing: AutoRouting | None = Field(
        default=None, description="pick the upstream by the request's complexity (a classifier model)"
    )
    log_payloads: bool | None = Field(
        default=None, description="keep request and answer bodies in the request log (secrets redacted)"
    )
    cache: ResponseCache | None = Field(
        default=None, description="reuse answers to equal requests (off when unset; see README)"
    )
    timeouts: Timeouts | None = Field(default=None, description=_GATEWAY_TIMEOUTS)
    tenant: str | None = Field(default=None, description="operators only: whose gateway this is")


class GatewayPatch(_In):
    name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    upstream: str | None = None
    instructions: str | None = None
    parameters: dict[str, Any] | None = None
    prefill: str | None = None
    policy: dict[str, ParameterRule] | None = None
    description: str | None = None
    knowledge: GatewayKnowledge | None = Field(default=None, description="null removes the knowledge")
    fallbacks: list[str] | None = Field(default=None, max_length=4)
    routing: AutoRouting | None = Field(default=None, description="null removes the routing")
    log_payloads: bool | None = None
    cache: ResponseCache | None = Field(default=None, description="null turns the response cache off")
    timeouts: Timeouts | None = Field(default=None, description="null removes them")


class GatewayOut(BaseModel):
    object: Literal["gateway"] = "gateway"
    id: str
    slug: str
    name: str
    tenant: str
    upstream: str
    instructions: str | None
    parameters: dict[str, Any]
    prefill: str | None
    policy: dict[str, ParameterRule]
    description: str
    knowledge: GatewayKnowledge | None = None
    fallbacks: list[str] = Field(default_factory=list)
    routing: AutoRouting | None = None
    log_payloads: bool | None = None
    cache: ResponseCache | None = None
    timeouts: Timeouts | None = None
    version: int = Field(description="1 when created, +1 on each update")

    @classmethod
    def of(cls, gateway: Gateway) -> GatewayOut:
        return cls(slug=gateway.slug, **gateway.model_dump())


class DeploymentIn(_In):
    name: str | None = Field(default=None, pattern=DEPLOYMENT_NAME, description="default: its position")
    base_url: str | None = Field(default=None, description="default: the upstream's")
    api_key: str | None = Field(
        default=None, description="stored encrypted; default: the upstream's (catalog: the operator's)"
    )
    weight: int = Field(default=1, ge=1, le=1000)


class DeploymentOut(BaseModel):
    name: str
    base_url: str | None
    has_api_key: bool
    weight: int


class UpstreamIn(_In):
    id: str | None = Field(default=None, description="catalog entries: '@provider/model'; own: generated")
    kind: Literal["catalog", "own"] = "own"
    provider: str = "openai"
    model: str | None = Field(default=None, description="required unless `from_catalog` gives it")
    base_url: str | None = Field(default=None, description="required unless `from_catalog` gives it")
    api_key: str | None = Field(default=None, description="stored encrypted; never shown again")
    from_catalog: str | None = Field(
        default=None,
        description="your own key for a catalog model (e.g. '@anthropic/claude-sonnet-4-5'): an own "
        "endpoint with that model's provider, base URL, wire format and model, called with `api_key`",
    )
    prices: Prices = Field(default_factory=Prices, description="per token, USD (catalog entries)")
    context_window: int | None = None
    description: str = ""
    tenant: str | None = Field(default=None, description="operators only: the owner of an own endpoint")
    timeouts: Timeouts | None = Field(default=None, description=_UPSTREAM_TIMEOUTS)
    max_retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES, description=_MAX_RETRIES)
    deployments: list[DeploymentIn] = Field(
        default_factory=list, max_length=MAX_DEPLOYMENTS, description=_DEPLOYMENTS
    )
    api: Api | None = Field(
        default=None,
        description="the wire format it speaks: openai (default: OpenAI-compatible), anthropic, gemini, azure",
    )
    modalities: dict[str, list[str]] | None = Field(
        default=None,
        description='e.g. {"input": ["text", "image"]}; {"output": ["embedding"]} makes it an embedding '
        "model, for POST /v1/embeddings only",
    )
    parameters: list[str] | None = Field(default=None, description="the request parameters it honours")

    @model_validator(mode="after")
    def _where(self) -> UpstreamIn:
        if self.from_catalog is None:
            for name in ("model", "base_url"):
                if getattr(self, name) is None:
                    raise ValueError(f"'{name}' is required (or 'from_catalog')")
        elif self.kind != "own":
            raise ValueError("'from_catalog' makes an own endpoint (kind 'own')")
        return self


class UpstreamPatch(_In):
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    prices: Prices | None = None
    context_window: int | None = None
    description: str | None = None
    api: Api | None = None
    modalities: dict[str, list[str]] | None = None
    parameters: list[str] | None = None
    timeouts: Timeouts | None = Field(default=None, description="null removes them")
    max_retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES, description="null: the worker's")
    deployments: list[DeploymentIn] | None = Field(
        default=None,
        max_length=MAX_DEPLOYMENTS,
        description="replaces the list (null or []: one deployment); a deployment given without "
        "api_key keeps the key of the deployment of the same name",
    )


class UpstreamOut(BaseModel):
    object: Literal["upstream"] = "upstream"
    id: str
    kind: Literal["catalog", "own"]
    provider: str
    model: str
    base_url: str
    has_api_key: bool
    prices: Prices
    tenant: str | None
    context_window: int | None
    description: str
    api: Api | None = None
    modalities: dict[str, list[str]] | None = None
    parameters: list[str] | None = None
    timeouts: Timeouts | None = None
    max_retries: int | None = None
    deployments: list[DeploymentOut] = Field(default_factory=list)

    @classmethod
    def of(cls, upstream: Upstream) -> UpstreamOut:
        data = upstream.model_dump(exclude={"api_key", "deployments"})
        return cls(
            has_api_key=bool(upstream.api_key), deployments=_deployments_out(upstream.deployments), **data
        )


def _deployments_out(deployments: list[Deployment]) -> list[DeploymentOut]:
    return [
        DeploymentOut(name=name, base_url=d.base_url, has_api_key=bool(d.api_key), weight=d.weight)
        for name, d in zip(deployment_names(deployments), deployments, strict=True)
    ]


class CircuitOut(BaseModel):
    object: Literal["circuit"] = "circuit"
    upstream: str
    deployment: str
    state: Literal["closed", "half_open", "open"] = Field(
        description="the worst any inference worker reports: open (skipped until open_until), "
        "half_open (the next request probes it), closed"
    )
    open_until: float | None = Field(default=None, description="unix seconds, while open")
    workers: dict[str, str] = Field(
        default_factory=dict, description="each worker's state, for the workers where it is not closed"
    )


class KeyIn(_In):
    name: str = ""
    kind: Literal["private", "public"] = "private"
    admin: bool = False
    expires_at: float | None = Field(default=None, description="unix seconds; none = never")
    expires_in: float | None = Field(
        default=None, gt=0, description="seconds from now (instead of expires_at)"
    )
    tenant: str | None = Field(default=None, description="operators only")
    operator: bool = Field(default=False, description="operators only")
    limits: KeyLimits | None = Field(
        default=None,
        description="requests per minute for the key and per client IP; public keys default to "
        f"{PUBLIC_KEY_DEFAULT_RPM_PER_IP} per IP",
    )


class KeyPatch(_In):
    name: str | None = None
    limits: KeyLimits | None = None


class KeyOut(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    tenant: str
    name: str
    kind: Literal["private", "public"]
    admin: bool
    operator: bool
    prefix: str
    created_at: float | None
    expires_at: float | None
    revoked: bool
    limits: KeyLimits

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(**key.model_dump(exclude={"hash"}))


class KeyCreated(KeyOut):
    secret: str = Field(description="shown once; only its hash is stored")


class TenantIn(_In):
    id: str = Field(
        pattern=TENANT_ID_PATTERN, description="lower-case; 'all' and a few other words are reserved"
    )
    name: str = ""


class TenantUpdate(_In):
    name: str | None = None
    limits: TenantLimits | None = Field(
        default=None, description="requests and tokens per minute across the tenant's keys (null: none)"
    )


T = TypeVar("T")


class ListOf(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: Literal[True] = True


class CollectionIn(_In):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="lower-case, unique per tenant")
    description: str = ""
    tenant: str | None = Field(default=None, description="operators only: whose collection this is")


class CollectionOut(BaseModel):
    object: Literal["collection"] = "collection"
    id: str
    tenant: str
    name: str
    description: str
    gateways: list[str] = Field(default_factory=list, description="slugs of the gateways it grounds")

    @classmethod
    def of(cls, collection: Collection, gateways: list[str]) -> CollectionOut:
        return cls(gateways=gateways, **collection.model_dump())


class DocumentsIn(_In):
    documents: list[KnowledgeDocument] = Field(min_length=1, max_length=1000)
