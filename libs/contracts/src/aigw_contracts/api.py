"""The public HTTP API: OpenAI's chat completions shapes plus what the gateway adds.

Additions (all ignored by OpenAI clients): `generation_context` on responses and on the stream's
usage-bearing chunk, `usage.prompt_tokens_details.cached_tokens`, `service_tier`.

Usage follows OpenAI's semantics: `prompt_tokens` includes cached tokens; the SKU lines split them
into `inference.chat_completions.in` (uncached) and `.in.cached`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Money travels as exact decimals inside the system; JSON numbers only at the edge. A Decimal with
# at most 15 significant digits survives float() and repr() unchanged, which is why the shortest
# float repr is written (the seed's shape wants numbers, not strings).
JsonDecimal = Annotated[Decimal, PlainSerializer(lambda d: float(d), return_type=float, when_used="json")]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


# Validation context of an envelope past the router: its request's messages are in the upstream body.
ROUTED = "aigw_routed"


class _Open(BaseModel):
    """Models that pass fields we don't know through untouched (OpenAI adds fields often)."""

    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _parts_have_type(cls, value: str | list[dict[str, Any]] | None) -> Any:
        if isinstance(value, list):
            for part in value:
                if not isinstance(part.get("type"), str):
                    raise ValueError("every content part needs a string 'type'")
        return value

    def text(self) -> str:
        """The message's text: the string, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


# The inference parameters a gateway can set and a request may override (subject to policy).
INFERENCE_PARAMETERS: tuple[str, ...] = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "reasoning_effort",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "verbosity",
)


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`. Unknown fields are refused (400 naming the field), never dropped."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | None = None  # shortcut for one user message (the reference product's API)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    user: str | None = Field(default=None, max_length=512)
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > 16:
                raise ValueError("metadata holds at most 16 keys")
            for k, v in value.items():
                if len(k) > 64 or len(v) > 512:
                    raise ValueError("metadata keys are at most 64 characters and values 512")
        return value

    @model_validator(mode="after")
    def _shape(self, info: ValidationInfo) -> ChatCompletionRequest:
        if self.prompt is not None:
            self.messages = [*self.messages, ChatMessage(role="user", content=self.prompt)]
            self.prompt = None
        # Past the router the messages travel once, inside the upstream body (`ChatEnvelope.routed`).
        if not self.messages and not (info.context and info.context.get(ROUTED)):
            raise ValueError("'messages' must contain at least one message")
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---------------------------------------------------------------- responses


class PromptTokensDetails(_Open):
    cached_tokens: int = 0


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens_details.cached_tokens


class GeneratedUsage(BaseModel):
    """One billable line: amount = unit_price × quantity, exactly."""

    sku: str
    amount: JsonDecimal
    unit_price: JsonDecimal
    quantity: int
    description: str

    @classmethod
    def priced(cls, sku: str, unit_price: Decimal, quantity: int, description: str) -> GeneratedUsage:
        return cls(
            sku=sku,
            amount=unit_price * quantity,
            unit_price=unit_price,
            quantity=quantity,
            description=description,
        )


class GenerationContext(_Open):
    generated_usage: list[GeneratedUsage] = Field(default_factory=list)
    runned_functions: list[dict[str, Any]] = Field(default_factory=list)


class AssistantMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class Choice(_Open):
    index: int = 0
    message: AssistantMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    service_tier: str | None = "default"
    system_fingerprint: str | None = None
    generation_context: GenerationContext = Field(default_factory=GenerationContext)


class ChunkDelta(_Open):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(_Open):
    index: int = 0
    delta: ChunkDelta
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Open):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None
    service_tier: str | None = None
    generation_context: GenerationContext | None = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
