"""HTTP client of the aigw APIs: which gateway to talk to, with which key, and readable errors.

The gateway's URL and the key are found the same way: given on the command line, from the
environment, or from the `.aigw/` folder `make run` writes in the directory it runs in (the key in
`demo-key`, the edge's URL in `gateway-url`), so `aigw` finds the stack it started, on whatever port.
The URL's origin is kept beside it: when the gateway cannot be reached, the error says where the
URL came from, which is usually the actual mistake.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080/v1"
STATE_DIR = Path(".aigw")  # what `make run` writes, relative to the directory it was run in
DEMO_KEY_FILE = STATE_DIR / "demo-key"
GATEWAY_URL_FILE = STATE_DIR / "gateway-url"


class CliError(Exception):
    pass


@dataclass(frozen=True)
class GatewayUrl:
    """The management API's base URL and where it came from (said in connection errors)."""

    url: str
    source: str


def resolve_gateway_url(explicit: str | None, environ: Mapping[str, str] = os.environ) -> GatewayUrl:
    """--gateway-url, then AIGW_GATEWAY_URL (AIGW_BASE_URL: its deprecated name), then the URL
    `make run` wrote to .aigw/gateway-url, then the port `make run` was given in AIGW_PORT, then
    the default."""
    if explicit:
        return GatewayUrl(explicit, "--gateway-url")
    if environ.get("AIGW_GATEWAY_URL"):
        return GatewayUrl(environ["AIGW_GATEWAY_URL"], "env AIGW_GATEWAY_URL")
    if environ.get("AIGW_BASE_URL"):
        return GatewayUrl(environ["AIGW_BASE_URL"], "env AIGW_BASE_URL (deprecated: use AIGW_GATEWAY_URL)")
    if GATEWAY_URL_FILE.is_file():
        written = GATEWAY_URL_FILE.read_text().strip()
        if written:
            return GatewayUrl(written, f"{GATEWAY_URL_FILE.resolve()}, written by `make run`")
    port = environ.get("AIGW_PORT", "").strip()
    if port:
        if not port.isdigit():
            raise CliError(f"AIGW_PORT must be a port number, not {port!r}")
        return GatewayUrl(f"http://127.0.0.1:{port}/v1", f"env AIGW_PORT={port}")
    return GatewayUrl(
        DEFAULT_GATEWAY_URL,
        f"the default: no --gateway-url, AIGW_GATEWAY_URL, {GATEWAY_URL_FILE.resolve()} or AIGW_PORT",
    )


def resolve_key(explicit: str | None) -> str:
    """--key, then AIGW_API_KEY, then the key `make run` wrote."""
    if explicit:
        return explicit
    if os.environ.get("AIGW_API_KEY"):
        return os.environ["AIGW_API_KEY"]
    if DEMO_KEY_FILE.exists():
        return DEMO_KEY_FILE.read_text().strip()
    raise CliError("no API key: pass --key, set AIGW_API_KEY, or run `make run` first")


class Api:
    def __init__(self, gateway: GatewayUrl, key: str, timeout: float = 30.0) -> None:
        self.gateway = gateway
        self._http = httpx.Client(
            base_url=gateway.url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the gateway API at {self.gateway.url} (from {self.gateway.source}): {exc}"
            ) from exc
        if resp.status_code >= 400:
            try:
                error = resp.json()["error"]
                param = f" (param: {error['param']})" if error.get("param") else ""
                message = f"{resp.status_code} {error['message']}{param}"
            except (ValueError, KeyError, TypeError):
                message = f"{resp.status_code} {resp.text[:200]}"
            raise CliError(message)
        return resp.json() if resp.content else None
