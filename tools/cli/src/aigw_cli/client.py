"""HTTP client of the aigw APIs; turns OpenAI-shaped error bodies into readable CLI errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
DEMO_KEY_FILE = Path(".aigw/demo-key")


class CliError(Exception):
    pass


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
    def __init__(self, base_url: str, key: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self._http.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                error = resp.json()["error"]
                param = f" (param: {error['param']})" if error.get("param") else ""
                message = f"{resp.status_code} {error['message']}{param}"
            except (ValueError, KeyError, TypeError):
                message = f"{resp.status_code} {resp.text[:200]}"
            raise CliError(message)
        return resp.json() if resp.content else None
