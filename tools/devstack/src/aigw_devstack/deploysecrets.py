"""`aigw-dev secrets`: the application secrets of a deployment (compose, Kubernetes), generated once.

Beside the bus credentials (`natsconf`), a deployment needs: the pepper of stored API key hashes,
the key that seals tenants' upstream API keys, ClickHouse's password (and so metering's DSN) and
Grafana's admin password. They are random, made here once and kept in `<out>/secrets.json`
(0600): re-running never changes one (a new pepper would invalidate every API key, a new sealing
key every stored upstream key). Each consumer gets an env file with only what it needs:

* `aigw.env`: the aigw services (`AIGW_KEY_PEPPER`, `AIGW_SECRETS_KEY`, `AIGW_METERING_DSN`,
  `OPENAI_API_KEY` left empty for the operator to fill);
* `clickhouse.env`: the ClickHouse server (`CLICKHOUSE_PASSWORD`);
* `grafana.env`: Grafana (`GF_SECURITY_ADMIN_PASSWORD`, `CLICKHOUSE_PASSWORD` for its data source);
* `compose.env`: everything, for `docker compose --env-file` (its `${…}` interpolation).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from aigw_runtime.secretbox import new_key

from .natsconf import write_private

GENERATED = {
    "AIGW_KEY_PEPPER": lambda: secrets.token_urlsafe(32),
    "AIGW_SECRETS_KEY": new_key,
    "CLICKHOUSE_PASSWORD": lambda: secrets.token_urlsafe(24),
    "GRAFANA_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
}


def _env(values: dict[str, str]) -> str:
    return "".join(f"{name}={value}\n" for name, value in values.items())


def metering_dsn(clickhouse_url: str, password: str) -> str:
    """`http://default:<password>@host:8123/aigw` from `http://host:8123/aigw`."""
    parts = urlsplit(clickhouse_url)
    netloc = f"default:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def write_secrets(out: Path, clickhouse_url: str = "http://clickhouse:8123/aigw") -> dict[str, Path]:
    """Write the env files (0600); returns name → path."""
    store = out / "secrets.json"
    values: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
    missing = [name for name in GENERATED if not values.get(name)]
    if missing or not store.exists() or store.stat().st_mode & 0o077:
        values.update({name: GENERATED[name]() for name in missing})
        write_private(store, json.dumps(values, indent=2) + "\n")
    aigw_env = out / "aigw.env"
    openai_key = ""
    if aigw_env.exists():  # keep what the operator filled in
        for line in aigw_env.read_text().splitlines():
            if line.startswith("OPENAI_API_KEY="):
                openai_key = line.partition("=")[2]
    dsn = metering_dsn(clickhouse_url, values["CLICKHOUSE_PASSWORD"])
    files = {
        "aigw": (
            aigw_env,
            {
                "AIGW_KEY_PEPPER": values["AIGW_KEY_PEPPER"],
                "AIGW_SECRETS_KEY": values["AIGW_SECRETS_KEY"],
                "AIGW_METERING_DSN": dsn,
                "OPENAI_API_KEY": openai_key,
            },
        ),
        "clickhouse": (out / "clickhouse.env", {"CLICKHOUSE_PASSWORD": values["CLICKHOUSE_PASSWORD"]}),
        "grafana": (
            out / "grafana.env",
            {
                "GF_SECURITY_ADMIN_PASSWORD": values["GRAFANA_ADMIN_PASSWORD"],
                "CLICKHOUSE_PASSWORD": values["CLICKHOUSE_PASSWORD"],
            },
        ),
        "compose": (out / "compose.env", {**values, "OPENAI_API_KEY": openai_key}),
    }
    for path, env in files.values():
        write_private(path, _env(env))
    return {name: path for name, (path, _) in files.items()}
