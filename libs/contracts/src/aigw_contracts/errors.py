"""OpenAI-shaped errors: one typed exception per fault, mapped once to a status and a body.

The OpenAI SDKs read `body["error"]` and pick the exception class from the HTTP status, and retry
408/409/429/5xx: the status here decides whether a client retries.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from . import headers


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# Error codes of faults in the gateway's configuration, not in the request or the moment.
# Retrying cannot help (the configuration is at fault), or would be billed again for an answer
# already generated (`answer_undelivered`).
NOT_RETRYABLE = frozenset({"upstream_auth_failed", "upstream_not_configured", "answer_undelivered"})


class GatewayError(Exception):
    """Base of every error a client may see. Subclasses fix status, type and code."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    @property
    def should_retry(self) -> bool | None:
        """False when retrying the same request cannot help (the gateway's own configuration is at
        fault): clients are told so in `x-should-retry`, which the OpenAI SDKs obey instead of
        retrying every 5xx. None: the status says enough."""
        return False if self.code in NOT_RETRYABLE else None

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        )

    def to_json(self) -> bytes:
        return self.body().model_dump_json().encode()


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class Forbidden(GatewayError):
    status, type, code = 403, "invalid_request_error", "forbidden"


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class Conflict(GatewayError):
    status, type, code = 409, "invalid_request_error", "conflict"


class IdempotencyConflict(Conflict):
    """A request with this `idempotency_key` is still running (the SDKs retry 409s)."""

    code = "idempotency_conflict"


class IdempotencyKeyReused(GatewayError):
    """The `idempotency_key` was used with a different request body: 422, as the IETF
    Idempotency-Key draft answers it (the SDKs do not retry it)."""

    status, type, code = 422, "invalid_request_error", "idempotency_key_reused"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_exceeded", "rate_limit_exceeded"


class InsufficientQuota(GatewayError):
    """The request cannot be afforded: the tenant's prepaid balance, or a tenant, key or gateway
    budget for the day or month, would be exceeded by what it may cost (`aigw_contracts.spend`).
    402, as payment is what is missing; retrying cannot help until a credit or a new period."""

    status, type, code = 402, "insufficient_quota", "insufficient_quota"

    @property
    def should_retry(self) -> bool | None:
        return False


class UpstreamError(GatewayError):
    """The upstream model failed (5xx, refused connection, dropped stream, unusable answer)."""

    status, type, code = 502, "upstream_error", "upstream_error"


class Unavailable(GatewayError):
    status, type, code = 503, "server_error", "service_unavailable"


class DeadlineExceeded(GatewayError):
    status, type, code = 504, "timeout", "deadline_exceeded"


class InternalError(GatewayError):
    status, type, code = 500, "server_error", "internal_error"


_BY_STATUS: dict[int, type[GatewayError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        InsufficientQuota,
        RateLimited,
        UpstreamError,
        Unavailable,
        DeadlineExceeded,
        InternalError,
    )
}


def error_for_status(status: int, message: str, **kwargs: Any) -> GatewayError:
    """The exception class matching an HTTP status (used to relay upstream 4xx faithfully)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InvalidRequest if 400 <= status < 500 else UpstreamError
    err = cls(message, **kwargs)
    err.status = status if 400 <= status < 600 else err.status
    return err


def error_of_reply(status: str, data: bytes, fallback: str) -> GatewayError:
    """The error a service's request-reply answer carries (an `Aigw-Status` header and an
    `ErrorBody`), raised again by the caller as the same error; `fallback` if the body is unreadable."""
    try:
        detail = ErrorBody.model_validate_json(data).error
    except ValueError:
        return InternalError(fallback)
    err = error_for_status(int(status), detail.message, param=detail.param)
    if detail.code:
        err.code = detail.code
    return err


def error_reply(err: GatewayError) -> tuple[bytes, dict[str, str]]:
    """A request-reply answer carrying `err` (the form `error_of_reply` reads back)."""
    return err.to_json(), {headers.STATUS: str(err.status)}


def invalid_message(exc: ValidationError, what: str) -> InvalidRequest:
    """A 400 for a service message that does not validate, naming its first problem and where."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    return InvalidRequest(f"Invalid {what}: {first['msg']}", param=where)
