"""`POST /v1/responses` (OpenAI's Responses API) on the chat completions pipeline; `GET` and `DELETE`
`/v1/responses/{id}` for stored responses.

`model` names a gateway, as on chat completions. The request becomes a chat completions body
(`bridge.py` runs it through the very chat endpoint): `instructions` → a system message (for this
response only, as OpenAI does: a continuation does not inherit them), `input` text or items
(messages with `input_text`/`input_image`/`output_text` parts, `function_call`,
`function_call_output`) → messages and tool calls/results, function `tools` and `tool_choice` →
theirs, `max_output_tokens` → `max_tokens`, `text.format` → `response_format`, `reasoning.effort`
→ `reasoning_effort`. Refused (400): built-in tools (web search, file search…), `background`.

Stored responses: unless `store: false`, the response and the conversation that led to it are
kept per tenant (`responsestore.py`) for `AIGW_RESPONSES_RETENTION`; `previous_response_id`
continues that conversation, before the answer's last bytes reach the client, so a client can chain
at once. A stream is OpenAI's typed events (`response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`/`.done`,
`response.content_part.done`, `response.function_call_arguments.delta`/`.done`,
`response.output_item.done`, `response.completed` or `response.incomplete`, `error`), each with its
`sequence_number`. `usage` and `generation_context` (the priced lines) are on the response.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Security
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from aigw_contracts.errors import GatewayError, InvalidRequest, NotFound

from ..bridge import Bridged, error_response, read_request, sse_event
from ..deps import PrivateKey, bearer
from ..openapi import errors as openapi_errors
from ..openapi import sse_of
from ..responsestore import ResponseStore

PATHS = ("/v1/responses",)

router = APIRouter(tags=["responses"])


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResponsesRequest(BaseModel):
    """OpenAI's `POST /v1/responses` body. Unknown fields are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=128)
    store: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    background: bool | None = None


class ResponseObject(_Open):
    """OpenAI's response object, plus `generation_context` (the priced usage lines)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
    previous_response_id: str | None = None
    store: bool
    generation_context: dict[str, Any] | None = None


class ResponseStreamEvent(_Open):
    """One typed event of a streamed response (`type` names it; so does the SSE `event:` line)."""

    type: str
    sequence_number: int


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool


# ---------------------------------------------------------------------------------------- request
def _text_parts(parts: Any, param: str, allowed: frozenset[str]) -> list[dict[str, Any]]:
    if isinstance(parts, str):
        return [{"type": "text", "text": parts}]
    if not isinstance(parts, list) or not parts:
        raise InvalidRequest("Expected a string or a non-empty array of content parts.", param=param)
    out: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{param}[{index}]"
        if kind not in allowed:
            raise InvalidRequest(f"Content parts of type '{kind}' are not supported here.", param=at)
        if kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise InvalidRequest(
                    "An input_image needs 'image_url' (file ids are not supported).", param=at
                )
            image: dict[str, Any] = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        else:
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise InvalidRequest("A text part needs 'text'.", param=f"{at}.text")
            out.append({"type": "text", "text": text})
    return out


_USER_PARTS = frozenset({"input_text", "input_image", "output_text"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "refusal"})


def input_messages(items: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The chat messages for a request's `input`."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        param = f"input[{index}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            content = item.get("content")
            if role == "user":
                out.append(
                    {
                        "role": "user",
                        "content": _compact(_text_parts(content, f"{param}.content", _USER_PARTS)),
                    }
                )
            elif role in ("system", "developer", "assistant"):
                parts = _text_parts(content, f"{param}.content", _TEXT_PARTS)
                out.append({"role": role, "content": "".join(p["text"] for p in parts)})
            else:
                raise InvalidRequest(
                    "A message's role is user, assistant, system or developer.", param=f"{param}.role"
                )
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise InvalidRequest("A function_call item needs 'call_id' and 'name'.", param=param)
            arguments = item.get("arguments")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else "{}"},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise InvalidRequest("A function_call_output item needs 'call_id'.", param=f"{param}.call_id")
            if not isinstance(output, str):
                output = "".join(p["text"] for p in _text_parts(output, f"{param}.output", _TEXT_PARTS))
            out.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # chat completions has no place for it
        else:
            raise InvalidRequest(f"Input items of type '{kind}' are not supported.", param=param)
    return out


def _compact(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (what most upstreams expect, and what echoes compare)."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise InvalidRequest(
                "Only function tools (type 'function' with a 'name') are supported.", param=f"tools[{index}]"
            )
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None
        }
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: str | dict[str, Any]) -> Any:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("tool_choice must be auto, none, required or a function.", param="tool_choice")


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format") or {}
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(f"text.format of type '{kind}' is not supported.", param="text.format")


def to_chat(
    request: ResponsesRequest, history: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chat completions body, and the conversation (without instructions) it carries."""
    if request.background:
        raise InvalidRequest("Background responses are not supported.", param="background")
    conversation = [*history, *input_messages(request.input)]
    if not conversation:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    messages = list(conversation)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    chat: dict[str, Any] = {"model": request.model, "messages": messages}
    for name in ("temperature", "top_p", "stream", "parallel_tool_calls", "metadata", "user", "service_tier"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value
    for name in ("safety_identifier", "prompt_cache_key"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value
    if request.max_output_tokens is not None:
        chat["max_tokens"] = request.max_output_tokens
    if request.tools:
        chat["tools"] = _tools(request.tools)
    if request.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(request.tool_choice)
    if request.text:
        response_format = _response_format(request.text)
        if response_format is not None:
            chat["response_format"] = response_format
    if request.reasoning and request.reasoning.get("effort"):
        chat["reasoning_effort"] = request.reasoning["effort"]
    return chat, conversation


# ---------------------------------------------------------------------------------------- answer
def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(details.get("reasoning_tokens") or 0)},
        "total_tokens": prompt + completion,
    }


class ResponsesTranslator:
    """Chat completions answers as the Responses API's (`bridge.Translator`), storing them unless
    `store: false`."""

    def __init__(
        self,
        request: ResponsesRequest,
        conversation: list[dict[str, Any]],
        tenant: str,
        store: ResponseStore,
    ) -> None:
        self.request_id = ""
        self.request = request
        self.conversation = conversation
        self.tenant = tenant
        self.store = store
        self.created_at = int(time.time())
        self.model = request.model
        self.seq = -1
        self.items: list[dict[str, Any]] = []  # output items, in order
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.calls: dict[int, dict[str, Any]] = {}  # a chunk's tool call index → its item
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.context: Any = None
        self.started = False

    @property
    def response_id(self) -> str:
        return f"resp_{self.request_id}"

    def response(self, status: str) -> dict[str, Any]:
        r = self.request
        out: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": self.items if status != "in_progress" else [],
            "usage": _usage(self.usage) if status != "in_progress" else None,
            "instructions": r.instructions,
            "previous_response_id": r.previous_response_id,
            "store": r.store is not False,
            "tools": r.tools or [],
            "tool_choice": r.tool_choice or "auto",
            "parallel_tool_calls": r.parallel_tool_calls is not False,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "max_output_tokens": r.max_output_tokens,
            "metadata": r.metadata or {},
            "text": r.text or {"format": {"type": "text"}},
            "truncation": r.truncation or "disabled",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        }
        if self.context is not None and status != "in_progress":
            out["generation_context"] = self.context
        return out

    @property
    def _status(self) -> str:
        return "incomplete" if self.finish == "length" else "completed"

    def error(self, status: int, body: dict[str, Any]) -> bytes:
        return json.dumps(body, ensure_ascii=False).encode()

    def answer(self, completion: dict[str, Any]) -> bytes:
        self.model = completion.get("model") or self.model
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        self.finish = choice.get("finish_reason")
        if message.get("content"):
            self.items.append(self._message_item(message["content"], "completed"))
        for position, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            item = self._call_item(position, call.get("id"), function.get("name"))
            item.update(arguments=function.get("arguments") or "", status="completed")
            self.items.append(item)
        self.usage = completion.get("usage")
        self.context = completion.get("generation_context")
        return json.dumps(self.response(self._status), ensure_ascii=False).encode()

    def _message_item(self, text: str, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": []}
        return {
            "type": "message",
            "id": f"msg_{self.request_id}",
            "status": status,
            "role": "assistant",
            "content": [part] if status == "completed" else [],
        }

    def _call_item(self, position: int, call_id: str | None, name: str | None) -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": f"fc_{self.request_id}_{position}",
            "call_id": call_id,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }

    # ------------------------------------------------------------------ stream
    def _event(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        return sse_event(kind, {"type": kind, "sequence_number": self.seq, **fields})

    def _close(self, out: list[bytes]) -> None:
        item = self.open
        if item is None:
            return
        self.open = None
        index = len(self.items) - 1
        if item["type"] == "message":
            text = item.pop("_text")
            part = {"type": "output_text", "text": text, "annotations": []}
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out.append(self._event("response.output_text.done", **common, text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", **common, part=part))
            item["content"] = [part]
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        item["status"] = "completed"
        out.append(self._event("response.output_item.done", output_index=index, item=item))

    def _add(self, out: list[bytes], item: dict[str, Any]) -> None:
        self._close(out)
        self.items.append(item)
        self.open = item
        shown = {k: v for k, v in item.items() if not k.startswith("_")}
        out.append(self._event("response.output_item.added", output_index=len(self.items) - 1, item=shown))

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            self.model = chunk.get("model") or self.model
            out.append(self._event("response.created", response=self.response("in_progress")))
            out.append(self._event("response.in_progress", response=self.response("in_progress")))
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open is None or self.open["type"] != "message":
                    item = self._message_item("", "in_progress")
                    item["_text"] = ""
                    self._add(out, item)
                    part = {"type": "output_text", "text": "", "annotations": []}
                    common = {"item_id": item["id"], "output_index": len(self.items) - 1, "content_index": 0}
                    out.append(self._event("response.content_part.added", **common, part=part))
                assert self.open is not None
                item = self.open
                item["_text"] += text
                common = {"item_id": item["id"], "output_index": len(self.items) - 1, "content_index": 0}
                out.append(self._event("response.output_text.delta", **common, delta=text, logprobs=[]))
            for call in delta.get("tool_calls") or ():
                position = int(call.get("index", 0))
                function = call.get("function") or {}
                if position not in self.calls:
                    item = self._call_item(position, call.get("id"), function.get("name"))
                    self.calls[position] = item
                    self._add(out, item)
                item = self.calls[position]
                fragment = function.get("arguments")
                if fragment:
                    item["arguments"] += fragment
                    out.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            item_id=item["id"],
                            output_index=self.items.index(item),
                            delta=fragment,
                        )
                    )
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("generation_context") is not None:
            self.context = chunk["generation_context"]
        return out

    def stream_error(self, body: dict[str, Any]) -> list[bytes]:
        error = body.get("error") or {}
        return [
            self._event(
                "error",
                code=error.get("code"),
                message=error.get("message"),
                param=error.get("param"),
                error=error,
            )
        ]

    def end(self) -> list[bytes]:
        out: list[bytes] = []
        if not self.started:
            out.extend(self.chunk({}))
        self._close(out)
        status = self._status
        name = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(name, response=self.response(status)))
        return out

    async def finished(self) -> None:
        if self.request.store is False:
            return
        answer: dict[str, Any] = {"role": "assistant", "content": None}
        text = "".join(
            part["text"] for item in self.items if item["type"] == "message" for part in item["content"]
        )
        calls = [
            {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            for item in self.items
            if item["type"] == "function_call"
        ]
        answer["content"] = text or (None if calls else "")
        if calls:
            answer["tool_calls"] = calls
        entry = {"response": self.response(self._status), "conversation": [*self.conversation, answer]}
        await self.store.put(self.tenant, self.response_id, entry)


# ---------------------------------------------------------------------------------------- routes
def _render_error(status: int, body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


@router.post(
    PATHS[0],
    dependencies=[Security(bearer)],  # documents the key; `read_request` checks it
    summary="Create a model response (OpenAI's Responses API)",
    response_model=ResponseObject,
    response_description="The response as JSON or, with `stream: true`, typed server-sent events",
    responses={
        200: {"content": {"text/event-stream": sse_of(ResponseStreamEvent)}},
        **openapi_errors(400, 401, 404, 413, 429, 502, 503, 504),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResponsesRequest"}}},
        }
    },
)
async def create_response(request: Request) -> Response:
    """OpenAI's Responses API on any gateway (`model`): text or item input, instructions, function
    tools and their outputs, stored responses continued by `previous_response_id` (per tenant,
    unless `store: false`), streaming as typed events. Adds `generation_context` to the response."""
    try:
        key, body = await read_request(request, request.app.state.keys, ResponsesRequest)
        history: list[dict[str, Any]] = []
        if body.previous_response_id is not None:
            found = await _store(request).get(key.tenant, body.previous_response_id)
            if found is None:
                raise NotFound(
                    f"Previous response with id '{body.previous_response_id}' not found.",
                    param="previous_response_id",
                )
            history = found["conversation"]
        chat, conversation = to_chat(body, history)
    except GatewayError as err:
        return error_response(err, _render_error)
    payload = json.dumps(chat, separators=(",", ":"), ensure_ascii=False).encode()
    translator = ResponsesTranslator(body, conversation, key.tenant, _store(request))
    return Bridged(request.app.state.chat_endpoint, payload, translator)


ResponseId = Annotated[str, Path(min_length=1, max_length=128)]


@router.get(
    PATHS[0] + "/{response_id}",
    summary="Retrieve a stored response",
    response_model=ResponseObject,
    responses=openapi_errors(401, 403, 404, 503),
)
async def get_response(response_id: ResponseId, key: PrivateKey, request: Request) -> Any:
    found = await _store(request).get(key.tenant, response_id)
    if found is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return found["response"]


@router.delete(
    PATHS[0] + "/{response_id}",
    summary="Delete a stored response",
    response_model=DeletedResponse,
    responses=openapi_errors(401, 403, 404, 503),
)
async def delete_response(response_id: ResponseId, key: PrivateKey, request: Request) -> DeletedResponse:
    if not await _store(request).delete(key.tenant, response_id):
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return DeletedResponse(id=response_id, deleted=True)


def _parts(content: Any, kind: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": kind, "text": content}]
    out = []
    for part in content or ():
        if part.get("type") == "image_url":
            out.append({"type": "input_image", "image_url": (part.get("image_url") or {}).get("url")})
        else:
            out.append({"type": kind, "text": part.get("text", "")})
    return out


def as_items(conversation: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """A stored conversation (chat messages) as the Responses API's input items."""
    items: list[dict[str, Any]] = []
    for index, message in enumerate(conversation):
        role, item_id = message["role"], f"in_{response_id}_{index}"
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "id": item_id,
                    "call_id": message["tool_call_id"],
                    "output": message.get("content") or "",
                }
            )
            continue
        if role != "assistant" or message.get("content"):
            kind = "output_text" if role == "assistant" else "input_text"
            items.append(
                {
                    "type": "message",
                    "id": item_id,
                    "role": role,
                    "status": "completed",
                    "content": _parts(message.get("content") or "", kind),
                }
            )
        for position, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "id": f"{item_id}_{position}",
                    "call_id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": function.get("arguments", ""),
                    "status": "completed",
                }
            )
    return items


class InputItems(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool = False


@router.get(
    PATHS[0] + "/{response_id}/input_items",
    summary="List a stored response's input items",
    response_model=InputItems,
    responses=openapi_errors(401, 403, 404, 503),
)
async def input_items(
    response_id: ResponseId,
    key: PrivateKey,
    request: Request,
    order: Literal["asc", "desc"] = "desc",
) -> InputItems:
    """Everything that led to the response (its conversation, earlier responses' included), without
    its own output; newest first unless `order=asc`."""
    found = await _store(request).get(key.tenant, response_id)
    if found is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    items = as_items(found["conversation"][:-1], response_id)  # the last message is the answer
    if order == "desc":
        items.reverse()
    return InputItems(
        data=items, first_id=items[0]["id"] if items else None, last_id=items[-1]["id"] if items else None
    )
