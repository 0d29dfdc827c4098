"""`POST /v1/embeddings`: OpenAI's request shape, and the messages between edge, router and embedder.

The edge validates the client's request, then asks the router (`subjects.ROUTER_EMBED`) with an
`EmbedJob`; the router sends it on to an inference worker as a `RoutedEmbed` when `model` names an
embedding upstream, else to retrieval (the bundled local model). Either embeds, meters the tokens as
`inference.embeddings.in`, and answers an `EmbedResult` JSON line followed by the vectors as raw little-endian float32 (one row per
input, `dim` columns): a quarter of their size as JSON numbers, and exactly the bytes OpenAI's
`encoding_format: base64` encodes, so the edge base64-encodes rows without touching a float.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .api import GeneratedUsage
from .config import Timeouts
from .messages import UpstreamTarget

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingsRequest(BaseModel):
    """OpenAI's `POST /v1/embeddings` body."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    # A string, strings, one token array, or token arrays (token ids of the model's own tokenizer).
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = Field(default=None, max_length=512)

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: str | list[str] | list[int] | list[list[int]]) -> object:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("expected a non-empty string or array")
        if len(items) > MAX_INPUTS and not isinstance(items[0], int):
            raise ValueError(f"at most {MAX_INPUTS} inputs per request")
        for item in items:
            if (isinstance(item, str) and not item) or (isinstance(item, list) and not item):
                raise ValueError("inputs must not be empty")
        return value

    def texts(self) -> tuple[list[str] | None, list[list[int]] | None]:
        """The inputs as texts, or as token arrays (exactly one of the two is set)."""
        value = self.input
        if isinstance(value, str):
            return [value], None
        if isinstance(value[0], str):
            return [str(v) for v in value], None
        if isinstance(value[0], int):
            return None, [[int(v) for v in value]]
        return None, [list(v) for v in value]


class EmbedJob(BaseModel):
    """Edge → retrieval: embed these inputs for this tenant (and bill them to this key)."""

    v: Literal[1] = 1
    request_id: str
    tenant: str
    key_id: str
    model: str
    texts: list[str] | None = None
    tokens: list[list[int]] | None = None
    dimensions: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    key_kind: Literal["private", "public"] = "private"
    deadline: float | None = None  # unix seconds; the worker holds spend until then


class RoutedEmbed(BaseModel):
    """Router → worker: the job, and the embedding upstream its `model` named."""

    job: EmbedJob
    gateway_id: str | None = None  # None when a catalog model was named directly
    gateway_slug: str | None = None
    upstream: UpstreamTarget
    timeouts: Timeouts | None = None  # the gateway's, over the upstream's own


class EmbedResult(BaseModel):
    """Retrieval → edge, the JSON line before the raw vectors."""

    model: str
    count: int
    dim: int
    tokens: int
    lines: list[GeneratedUsage]
