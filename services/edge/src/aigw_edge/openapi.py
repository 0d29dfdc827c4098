"""What `/openapi.json` says beyond what FastAPI derives from the routes by itself.

* Errors: every error is OpenAI's error body (`aigw_contracts.errors.ErrorBody`), whatever its
  status. `errors(...)` documents the statuses a route answers, plus a `default` response, which
  also keeps FastAPI from documenting its own 422 validation body: this API answers 400.
* The chat endpoint is served before FastAPI (see `app.py`), so its operation comes from
  `routes.chat.documented`, a router that is documented but never routed. A streamed answer is
  documented as `text/event-stream` whose events carry `ChatCompletionChunk`s; `chunk_schema`
  puts that model among the components, where FastAPI puts only the models routes return.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from aigw_contracts.errors import ErrorBody

REF_PREFIX = "#/components/schemas/"

_WHY = {
    400: "Invalid request: `param` names the field",
    401: "Missing, unknown, revoked or expired API key",
    403: "The key may not do this",
    404: "No such thing, or it belongs to another tenant",
    409: "Conflicts with what exists (a name in use, a concurrent change)",
    413: "Request body too large",
    429: "Rate limited (`Retry-After` says when to retry)",
    502: "The upstream failed",
    503: "A service the gateway needs is not available (retry)",
    504: "Deadline passed",
}

Responses = dict[int | str, dict[str, Any]]


def errors(*statuses: int) -> Responses:
    """OpenAPI responses for these error statuses, all OpenAI's error body."""
    out: Responses = {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}
    out["default"] = {"model": ErrorBody, "description": "Any other error, as OpenAI's error body"}
    return out


def add_components(schema: dict[str, Any], *models: type[BaseModel]) -> None:
    """Put `models` (and the models they use) in the schema's components, without replacing any
    FastAPI already put there."""
    _, top = models_json_schema(
        [(model, "serialization") for model in models], ref_template=REF_PREFIX + "{model}"
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in top.get("$defs", {}).items():
        components.setdefault(name, definition)


def sse_of(model: type[BaseModel]) -> dict[str, Any]:
    """A `text/event-stream` media type whose events' `data` is `model` as JSON (OpenAPI 3.2's
    `itemSchema`, as FastAPI writes it for its own SSE routes)."""
    return {
        "itemSchema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": REF_PREFIX + model.__name__},
                }
            },
        },
    }
