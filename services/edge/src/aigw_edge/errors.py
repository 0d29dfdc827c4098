"""Every error a client can see, as OpenAI's error body with the status the SDKs map to exceptions.

The typed errors live in `aigw_contracts.errors`; this module turns them (and whatever else can go
wrong: bad JSON, unknown routes, wrong methods, bugs) into responses, once, here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Send

from aigw_contracts.errors import GatewayError, InternalError, InvalidRequest, NotFound, error_for_status

log = logging.getLogger("aigw.edge")

JSON_TYPE = b"application/json"
Headers = list[tuple[bytes, bytes]]


async def send_body(send: Send, status: int, body: bytes, headers: Headers, content_type: bytes) -> None:
    """A whole response in two ASGI messages, with the headers given plus content type and length."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: GatewayError, headers: Headers | None = None) -> None:
    extra = list(headers or ())
    if err.retry_after is not None:
        extra.extend(retry_after_headers(err.status, err.retry_after))
    if err.should_retry is False:
        extra.append((b"x-should-retry", b"false"))
    await send_body(send, err.status, err.to_json(), extra, JSON_TYPE)


def retry_after_headers(status: int, seconds: float) -> Headers:
    """`Retry-After` in whole seconds (HTTP's form); a 429 also gets OpenAI's precise `retry-after-ms`."""
    whole = max(0, int(-(-seconds // 1)))  # ceil: never invite a retry before the upstream allows it
    out = [(b"retry-after", str(whole).encode())]
    if status == 429:
        out.append((b"retry-after-ms", str(max(0, round(seconds * 1000))).encode()))
    return out


# ---------------------------------------------------------------- request validation

# pydantic names the member of a union it tried ('str', 'list[str]', 'dict[str,any]'): not a field.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "bytes"})
_QUOTED_FIELD = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)'")


def _param(loc: tuple[int | str, ...], message: str) -> str | None:
    """The field a validation error is about, written as OpenAI writes it: `messages[1].content`."""
    param = ""
    for item in loc:
        if isinstance(item, int):
            param += f"[{item}]"
        elif item in _TYPE_TAGS or "[" in item or "-" in item:
            break
        else:
            param += f".{item}" if param else item
    if param:
        return param
    # A whole-request rule ("'messages' must contain…") has no location: its message names the field.
    found = _QUOTED_FIELD.search(message)
    return found.group(1) if found else None


def invalid_request(exc: ValidationError | RequestValidationError) -> InvalidRequest:
    """The first validation error as OpenAI reports it: a message and `param` naming the field."""
    errors: Any = exc.errors()
    if not errors:
        return InvalidRequest("The request body is not valid.")
    first = errors[0]
    kind, loc, msg = first.get("type", ""), tuple(first.get("loc", ())), str(first.get("msg", ""))
    if isinstance(exc, RequestValidationError) and loc and loc[0] == "body":
        loc = loc[1:]
    if kind == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. The body must be a JSON object "
            f"({msg.removeprefix('Invalid JSON: ')}).",
            code="invalid_json",
        )
    if kind == "model_type" and not loc:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    msg = msg.removeprefix("Value error, ")
    param = _param(loc, msg)
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    where = f"'{param}'" if param else "the request"
    return InvalidRequest(f"Invalid value for {where}: {msg}", param=param)


# ---------------------------------------------------------------- FastAPI handlers


def _response(err: GatewayError, headers: Mapping[str, str] | None = None) -> Response:
    out = dict(headers or {})
    extra: Headers = list(getattr(err, "headers", None) or ())  # a plan limit's x-ratelimit-*
    if err.retry_after is not None:
        extra.extend(retry_after_headers(err.status, err.retry_after))
    if err.should_retry is False:
        extra.append((b"x-should-retry", b"false"))
    out.update((k.decode(), v.decode()) for k, v in extra)
    return Response(err.to_json(), status_code=err.status, media_type="application/json", headers=out)


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    err: GatewayError
    if exc.status_code == 404:
        err = NotFound(f"Invalid URL ({where}): no such route.", code="unknown_url")
    elif exc.status_code == 405:
        err = error_for_status(405, f"Method not allowed ({where}).", code="method_not_allowed")
    else:
        err = error_for_status(exc.status_code, str(exc.detail))
    return _response(err, exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _response(invalid_request(exc))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this response, so the server logs the traceback; the client gets none.
    return _response(InternalError("The gateway had an internal error; it has been logged."))


def install(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
