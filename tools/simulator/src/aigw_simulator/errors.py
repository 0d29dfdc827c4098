"""Errors the simulator answers with, in OpenAI's error-body shape.

Clients under test (the gateway, the official SDK) branch on status, `type` and `code`, so these copy
OpenAI's values rather than inventing our own.
"""

from __future__ import annotations

import json


class SimError(Exception):
    """A request the simulator refuses; `app.py` turns it into one HTTP response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    @property
    def outcome(self) -> str:
        """How /sim/requests records a request refused with this error: its status code."""
        return str(self.status)

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> SimError:
    return SimError(400, message, param=param, code=code)
