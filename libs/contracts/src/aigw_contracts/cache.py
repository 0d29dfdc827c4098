"""A gateway's response-cache hit, billed: the edge (which served it) → retrieval (which bills it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .api import GeneratedUsage


class CacheHit(BaseModel):
    v: Literal[1] = 1
    request_id: str
    tenant: str
    key_id: str
    gateway_id: str
    cached_request_id: str  # the request whose answer was served again
    metadata: dict[str, str] = Field(default_factory=dict)


class CacheHitBilled(BaseModel):
    lines: list[GeneratedUsage]
