"""The catalog models shipped with aigw: provider, wire format, base URL, context window,
modalities, supported parameters and exact prices per SKU.

The data is `catalog.json` (versioned, dated): prices there are USD per million tokens, as providers
publish them, and become exact per-token Decimals here. Each provider's `api`, `base_url` and
`parameters` apply to its models unless a model says otherwise. Operators override or add entries
through the management API (`/v1/upstreams`, kept in the config store), which win over these.
Credentials for catalog providers are never part of this data: only inference workers hold them.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from .config import Prices, Upstream

_PER_MILLION = Decimal(1_000_000)


@cache
def _raw() -> str:
    return resources.files(__package__).joinpath("catalog.json").read_text()


def catalog_data() -> dict[str, Any]:
    """The catalog file as it is (its `version`, `date` and `prices_note` included)."""
    data: dict[str, Any] = json.loads(_raw())
    return data


def _per_token(prices: dict[str, str]) -> Prices:
    return Prices.model_validate(
        {name: (Decimal(value) / _PER_MILLION).normalize() for name, value in prices.items()}
    )


def builtin_catalog() -> list[Upstream]:
    data = catalog_data()
    providers: dict[str, dict[str, Any]] = data["providers"]
    out: list[Upstream] = []
    for entry in data["models"]:
        provider = providers[entry["provider"]]
        api = entry.get("api", provider["api"])
        out.append(
            Upstream(
                id=f"@{entry['provider']}/{entry['model']}",
                provider=entry["provider"],
                model=entry["model"],
                base_url=entry.get("base_url", provider["base_url"]),
                api=None if api == "openai" else api,
                prices=_per_token(entry["prices"]),
                context_window=entry.get("context_window"),
                modalities={"input": entry.get("input", ["text"]), "output": entry.get("output", ["text"])},
                parameters=entry.get("parameters", provider["parameters"]),
            )
        )
    return out
