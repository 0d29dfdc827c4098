"""The catalog models shipped with aigw (provider, model, exact per-token prices).

Operators may add or override entries in the config store; these are what a fresh install knows.
Credentials for catalog providers are never part of this data: only inference workers hold them.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from .config import Upstream


@cache
def _raw() -> str:
    return resources.files(__package__).joinpath("catalog.json").read_text()


def builtin_catalog() -> list[Upstream]:
    return [Upstream.model_validate(u) for u in json.loads(_raw())["upstreams"]]
