"""The public HTTP API: OpenAI's chat completions shapes plus what the gateway adds.

Additions (all ignored by OpenAI clients): `generation_context` on responses and on the stream's
usage-bearing chunk, `usage.prompt_tokens_details.cached_tokens`, `service_tier`.

Usage follows OpenAI's semantics: `prompt_tokens` includes cached tokens; the SKU lines split them
into `inference.chat_completions.in` (uncached) and `.in.cached`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

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


# ---------------------------------------------------------------- what each request parameter does

Handling = Literal["policy", "pass", "gateway", "refused"]


class Parameter(NamedTuple):
    """One rule per request parameter (README, "Request parameters", is this table in prose):

    * `policy`: an inference parameter; the gateway's override policy decides the value sent
      (`aigw_router.policy`). `overridable`: a request may set it when the gateway's policy says
      nothing about it; `public`: public keys may set it too.
    * `pass`: forwarded upstream as the request sent it (not the gateway's business).
    * `gateway`: the gateway acts on it itself (it is never forwarded as such).
    * `refused`: a 400 naming the parameter: the gateway cannot honour it (or bill it) faithfully.
    """

    handling: Handling
    overridable: bool = False
    public: bool = False


_POLICY_OPEN = Parameter("policy", overridable=True)
_POLICY_PUBLIC = Parameter("policy", overridable=True, public=True)
_POLICY_LOCKED = Parameter("policy")
_PASS = Parameter("pass")
_GATEWAY = Parameter("gateway")
_REFUSED = Parameter("refused")

# Every field of `ChatCompletionRequest`, in the order of OpenAI's reference (ours last).
PARAMETERS: dict[str, Parameter] = {
    "messages": _GATEWAY,
    "model": _GATEWAY,
    "audio": _REFUSED,
    "frequency_penalty": _POLICY_LOCKED,
    "function_call": _REFUSED,
    "functions": _REFUSED,
    "logit_bias": _POLICY_OPEN,
    "logprobs": _POLICY_OPEN,
    "max_completion_tokens": _POLICY_PUBLIC,
    "max_tokens": _POLICY_PUBLIC,
    "metadata": _GATEWAY,
    "modalities": _PASS,
    "n": _POLICY_OPEN,
    "parallel_tool_calls": _POLICY_OPEN,
    "prediction": _PASS,
    "presence_penalty": _POLICY_LOCKED,
    "prompt_cache_key": _PASS,
    "prompt_cache_retention": _PASS,
    "reasoning_effort": _POLICY_OPEN,
    "response_format": _POLICY_OPEN,
    "safety_identifier": _PASS,
    "seed": _POLICY_OPEN,
    "service_tier": _GATEWAY,
    "stop": _POLICY_PUBLIC,
    "store": _GATEWAY,
    "stream": _GATEWAY,
    "stream_options": _GATEWAY,
    "temperature": _POLICY_PUBLIC,
    "tool_choice": _POLICY_OPEN,
    "tools": _POLICY_OPEN,
    "top_logprobs": _POLICY_OPEN,
    "top_p": _POLICY_PUBLIC,
    "user": _PASS,
    "verbosity": _POLICY_LOCKED,
    "web_search_options": _REFUSED,
    "prompt": _GATEWAY,
    "idempotency_key": _GATEWAY,
}

# The inference parameters a gateway can set and a request may override (subject to policy).
INFERENCE_PARAMETERS: tuple[str, ...] = tuple(n for n, p in PARAMETERS.items() if p.handling == "policy")
# Those a request may override when a gateway's policy says nothing about them: the reference
# product's documented list, plus `n`, `logprobs`, `top_logprobs` and `logit_bias`, which change
# what comes back (and its cost) but not what the gateway instructs the model to do.
DEFAULT_OVERRIDABLE: frozenset[str] = frozenset(n for n, p in PARAMETERS.items() if p.overridable)
# Public keys (embedded in web pages) may set only these; any other request value is ignored.
PUBLIC_KEY_PARAMETERS: frozenset[str] = frozenset(n for n, p in PARAMETERS.items() if p.public)
# Forwarded upstream as sent.
PASS_THROUGH: tuple[str, ...] = tuple(n for n, p in PARAMETERS.items() if p.handling == "pass")

# Service tiers a request may name: the gateway prices the default tier, so it answers only in it.
SERVICE_TIERS_ACCEPTED = frozenset({"auto", "default"})
MAX_TOOLS = 128  # OpenAI's limit on `tools`
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Content part types each role may send (OpenAI's reference); user parts are not restricted here,
# since OpenAI adds input kinds often and the upstream judges them.
_PART_TYPES: dict[str, frozenset[str]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "tool": frozenset({"text"}),
    "assistant": frozenset({"text", "refusal"}),
}
_NEEDS_CONTENT = frozenset({"system", "developer", "user", "tool"})


# ---------------------------------------------------------------- request validation

Loc = tuple[str | int, ...]


class _Problem(Exception):
    """One problem found inside a message or tool: where (relative), and whether it is missing."""

    def __init__(self, loc: Loc, message: str | None = None) -> None:
        super().__init__(message or "Field required")
        self.loc = loc
        self.missing = message is None


def _raise(title: str, problem: _Problem, value: Any, prefix: Loc = ()) -> NoReturn:
    """A pydantic `ValidationError` at `prefix + problem.loc`. Raised inside a validator, pydantic
    puts the field's own location in front, so the edge reports e.g. `messages[1].content`."""
    kind = (
        PydanticCustomError("missing", "Field required")
        if problem.missing
        else PydanticCustomError("invalid_value", str(problem))
    )
    raise ValidationError.from_exception_data(
        title, [InitErrorDetails(type=kind, loc=(*prefix, *problem.loc), input=value)]
    )


def _check_parts(role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        raise _Problem(("content",), "expected a string or a non-empty array of content parts")
    allowed = _PART_TYPES.get(role)
    for index, part in enumerate(parts):
        kind = part.get("type")
        if allowed is not None and kind not in allowed:
            listed = " or ".join(f"'{t}'" for t in sorted(allowed))
            raise _Problem(
                ("content", index, "type"), f"a '{role}' message's content parts must have type {listed}"
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _Problem(("content", index, "text"))
        if kind == "refusal" and not isinstance(part.get("refusal"), str):
            raise _Problem(("content", index, "refusal"))


def _check_tool_call(call: Any) -> None:
    """An assistant message's tool call, as OpenAI requires it: id, type and the call itself."""
    if not isinstance(call, dict):
        raise _Problem((), "expected an object")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise _Problem(("id",))
    kind = call.get("type")
    if kind is None:
        raise _Problem(("type",))
    if kind == "function":
        function = call.get("function")
        if not isinstance(function, dict):
            raise _Problem(("function",))
        if not isinstance(function.get("name"), str):
            raise _Problem(("function", "name"))
        if not isinstance(function.get("arguments"), str):
            raise _Problem(("function", "arguments"))
    elif kind == "custom":
        if not isinstance(call.get("custom"), dict):
            raise _Problem(("custom",))
    else:
        raise _Problem(("type",), "expected 'function' or 'custom'")


def _check_tool(tool: Any) -> None:
    """A `tools` entry: a function (or custom) tool with a name OpenAI accepts."""
    if not isinstance(tool, dict):
        raise _Problem((), "expected an object")
    kind = tool.get("type")
    if kind is None:
        raise _Problem(("type",))
    if kind not in ("function", "custom"):
        raise _Problem(("type",), "expected 'function' or 'custom'")
    spec = tool.get(kind)
    if not isinstance(spec, dict):
        raise _Problem((kind,))
    name = spec.get("name")
    if not isinstance(name, str):
        raise _Problem((kind, "name"))
    if not _FUNCTION_NAME.match(name):
        raise _Problem((kind, "name"), "a tool name is 1 to 64 letters, digits, underscores or dashes")
    if kind == "function" and "parameters" in spec and not isinstance(spec["parameters"], dict):
        raise _Problem(("function", "parameters"), "expected a JSON Schema object")


class ChatMessage(_Open):
    """One message of a request, held to what OpenAI requires of its role (a 400 naming the field,
    e.g. `messages[1].content`, instead of a request the upstream refuses or, worse, accepts)."""

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

    @model_validator(mode="after")
    def _role_requirements(self) -> ChatMessage:
        try:
            self._check_role()
        except _Problem as problem:
            _raise("ChatMessage", problem, self.model_dump(exclude_none=True))
        return self

    def _check_role(self) -> None:
        role, content = self.role, self.content
        if role in _NEEDS_CONTENT and content is None:
            raise _Problem(("content",))
        if role == "tool" and not self.tool_call_id:
            raise _Problem(("tool_call_id",))
        if role == "function" and not self.name:
            raise _Problem(("name",))
        if isinstance(content, list):
            _check_parts(role, content)
        if self.tool_calls is not None:
            if role != "assistant":
                raise _Problem(("tool_calls",), "only assistant messages carry tool calls")
            if not self.tool_calls:
                raise _Problem(("tool_calls",), "expected an array with at least one tool call")
            for index, call in enumerate(self.tool_calls):
                try:
                    _check_tool_call(call)
                except _Problem as problem:
                    raise _Problem(
                        ("tool_calls", index, *problem.loc), None if problem.missing else str(problem)
                    ) from None
        if role == "assistant" and content is None and not self.tool_calls:
            extra = self.model_extra or {}
            if extra.get("function_call") is None and extra.get("audio") is None:
                raise _Problem(
                    ("content",), "an assistant message needs 'content' unless it has 'tool_calls'"
                )

    def text(self) -> str:
        """The message's text: the string, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")


def _check_conversation(messages: list[ChatMessage]) -> None:
    """Tool results answer the tool calls of the assistant message right before them, and every
    call gets its result (OpenAI refuses both; so do other providers' OpenAI-compatible APIs)."""
    pending: set[str] = set()  # ids of calls still waiting for their 'tool' message
    asked_at = -1  # index of the assistant message that made them
    for index, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in pending:
                raise _Problem(
                    (index, "tool_call_id"),
                    "a 'tool' message must answer a tool call of the assistant message before it",
                )
            pending.discard(message.tool_call_id)
            continue
        if pending:
            break
        if message.role == "assistant" and message.tool_calls:
            pending = {str(call["id"]) for call in message.tool_calls}
            asked_at = index
    if pending:
        raise _Problem(
            (asked_at, "tool_calls"),
            "an assistant message with 'tool_calls' must be followed by 'tool' messages answering "
            f"each call; no answer for: {', '.join(sorted(pending))}",
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = None
    # OpenAI pads stream chunks against length side channels when this is on; the gateway's chunks
    # carry no padding, so it is accepted and has no effect.
    include_obfuscation: bool | None = None


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`. Unknown fields are refused (400 naming the field), never dropped;
    what each known one does is `PARAMETERS`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | None = None  # shortcut for one user message (the reference product's API)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=300
    )
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
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = Field(default=None, max_length=32)
    safety_identifier: str | None = None
    audio: Any = None
    functions: Any = None
    function_call: Any = None
    web_search_options: Any = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)

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

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token in value or ():
            if not token.isdigit():
                raise ValueError(f"keys are token ids (integers as strings), got '{token[:32]}'")
        return value

    @field_validator("tools")
    @classmethod
    def _tools_are_callable(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value is None:
            return None
        if len(value) > MAX_TOOLS:
            raise ValueError(f"at most {MAX_TOOLS} tools are allowed")
        for index, tool in enumerate(value):
            try:
                _check_tool(tool)
            except _Problem as problem:
                _raise("tools", problem, tool, (index,))
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_shape(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, str) and value not in ("none", "auto", "required"):
            raise ValueError("expected 'none', 'auto', 'required' or an object naming a tool")
        if isinstance(value, dict) and not isinstance(value.get("type"), str):
            raise ValueError("an object 'tool_choice' needs a 'type'")
        return value

    @field_validator("service_tier")
    @classmethod
    def _default_tier_only(cls, value: str | None) -> str | None:
        if value is not None and value not in SERVICE_TIERS_ACCEPTED:
            raise ValueError(
                "this gateway prices and serves the default tier only; use 'auto' or 'default' (or omit it)"
            )
        return value

    @field_validator("store")
    @classmethod
    def _nothing_stored(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError(
                "this gateway does not store completions with the upstream provider; omit it or send false"
            )
        return value

    @field_validator("audio", "functions", "function_call", "web_search_options")
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError(_REFUSALS[info.field_name or ""])
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
        if self.top_logprobs is not None and self.logprobs is not True:
            raise ValueError("'top_logprobs' needs 'logprobs' set to true")
        try:
            _check_conversation(self.messages)
        except _Problem as problem:
            _raise("ChatCompletionRequest", problem, None, ("messages",))
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_REFUSALS = {
    "audio": "audio output is not available through this gateway (its tokens are not metered); remove it",
    "functions": "'functions' is deprecated and not supported by this gateway; send 'tools' instead",
    "function_call": "'function_call' is deprecated and not supported by this gateway; send 'tool_choice'",
    "web_search_options": "web search is not available through this gateway (it is not metered); remove it",
}


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
    reasoning_content: str | None = None  # thinking text: DeepSeek's, vLLM's, OpenRouter's field
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
    """One entry of `GET /v1/models`: OpenAI's four fields, then what the catalog says of the model
        (of a gateway: of its first upstream), each left out when not known (the router lists them with
    `exclude_none`)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    provider: str | None = None
    context_window: int | None = None
    input_modalities: list[str] | None = None
    output_modalities: list[str] | None = None
    supported_parameters: list[str] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
